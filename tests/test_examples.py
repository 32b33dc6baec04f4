"""Every script in examples/ runs, as a user would run it (a subprocess of this Python), with
small settings given through the flags each example already has.

A new example must get its row in ``EXAMPLES`` (flags for a run of seconds, and what its output
must show); ``test_every_example_has_settings`` fails until it does. ``{out}`` in the flags is a
fresh temporary folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
from helpers import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _number_after(text: str, marker: str) -> float:
    return float(text.split(marker)[1].split()[0].rstrip(";,"))


def _fid_verdict_agrees(out: str) -> bool:
    """disback_distill.py's closing line: its verdict says "improved" exactly when the generator's
    FID-digits is below G⁰'s, and its ratio is the quotient of the two printed values."""
    line = next(x for x in out.splitlines() if x.startswith("FID-digits (n = "))
    m = re.search(r"generator (\S+) vs G⁰ (\S+) \(ratio (\S+)\)", line)
    fid, g0, ratio = (float(v) for v in m.groups())
    improved = "did NOT improve" not in line and "improved on G⁰" in line
    return improved == (fid < g0) and abs(ratio - fid / g0) <= 0.006 + 0.01 * ratio


@dataclass
class Example:
    args: list
    prints: tuple = ()  # substrings of stdout
    files: tuple = ()  # paths under {out} that must exist
    check: Optional[Callable[[str], bool]] = None  # a property of stdout
    timeout: int = 300
    env: dict = field(default_factory=dict)


EXAMPLES = {
    "bdia_edm_sampling.py": Example(["--model", "tiny", "--nfe", "5", "--n", "4", "--output", "{out}"],
                                    prints=("5 NFE",), files=("bdia_euler.png",),
                                    check=lambda out: _number_after(out, "max error") < 1e-10),
    "bdia_exact_inversion.py": Example(["--steps", "6", "--output", "{out}"], prints=("round-trip relative error",),
                                       files=("edited.png",), env={"OMP_NUM_THREADS": "2"}),
    "disback_distill.py": Example(["--output", "{out}/onestep", "--max-steps", "2", "--stage1-steps", "2",
                                   "--path-nodes", "2", "--steps-per-node", "1", "--batch-size", "4", "--fid-n", "20"],
                                  prints=("NFE 1", "FID-digits (n = 20, seed 0): generator "),
                                  files=("onestep/samples.png", "onestep/model_index.json"),
                                  check=lambda out: _fid_verdict_agrees(out), timeout=60),
    "edit_digit.py": Example(["--steps", "6", "--count", "2", "--output", "{out}/e.png"], prints=("3 -> 8",),
                             files=("e.png",)),
    "fid_folders.py": Example(["--n", "100", "--output", "{out}"], prints=("clean-fid", "torchmetrics"), timeout=180),
    "gauge_analysis.py": Example(["--n", "500", "--steps", "30"], prints=("gauge a=3", "S^2")),
    "onestep_sampling.py": Example(["--per-class", "2", "--output", "{out}/s.png"], prints=("20 images",),
                                   files=("s.png",), check=lambda out: _number_after(out, "top-1 ") >= 0.8,
                                   timeout=60),
    "radd_sampling.py": Example(["--steps", "32", "--n", "2", "--length", "32", "--prompt", "The"],
                                prints=("identical samples: True", "E-NFE law"), timeout=120),
    "text_sampling.py": Example(["--steps", "8", "32"], prints=("\nA list ", "bits/char"),
                                check=lambda out: out.count("=== ") == 2, timeout=120),
    "train_digits_teacher.py": Example(["--steps", "4", "--batch-size", "16", "--output", "{out}/teacher",
                                        "--preset", "tiny"], files=("teacher/samples.png", "teacher/model_index.json")),
}

SCRIPTS = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_every_example_has_settings():
    assert sorted(set(SCRIPTS) - set(EXAMPLES)) == [], "examples without a row in tests/test_examples.py EXAMPLES"
    assert sorted(set(EXAMPLES) - set(SCRIPTS)) == [], "rows of EXAMPLES without a script in examples/"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s in EXAMPLES])
def test_example_runs(script, tmp_path):
    ex = EXAMPLES[script]
    args = [a.replace("{out}", str(tmp_path)) for a in ex.args]
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                       env={**ENV, **ex.env}, cwd=tmp_path, timeout=ex.timeout)
    assert r.returncode == 0, f"{script} exited with {r.returncode}:\n{r.stderr[-3000:]}"
    for text in ex.prints:
        assert text in r.stdout, f"{script} did not print {text!r}:\n{r.stdout[-2000:]}"
    for rel in ex.files:
        assert (tmp_path / rel).exists(), f"{script} did not write {rel}"
    if ex.check is not None:
        assert ex.check(r.stdout), f"{script}: its output fails the check:\n{r.stdout[-2000:]}"
