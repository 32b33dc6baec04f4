"""benchmarks/gpu/run.py: the GPU check's CPU ``--tiny`` mode runs end to end, lists every row,
reports the attention fallback (with an installed xformers whose import is broken, as on the
project's GPU machines), and gives finite numbers; the script imports diffkit from a bare checkout."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu" / "run.py"
SECTIONS = ROOT / "benchmarks" / "gpu" / "sections.py"  # the measurements, imported by run.py after its set-up

EXPECTED = [  # the rows: attention, repeatability, BDIA, RADD (two settings), DisBack
    "attention.choice", "attention.sdpa.forward_ms", "attention.sdpa.peak_mem_gib", "attention.xformers.forward_ms",
    "attention.xformers.peak_mem_gib", "attention.xformers.rel_diff", "repeat.bitwise",
    "bdia.step_us.ddim", "bdia.step_us.bdia", "bdia.step_share", "bdia.loop_s.ddim", "bdia.loop_s.bdia",
    "bdia.loop_ratio", "bdia.roundtrip.state64", "bdia.roundtrip.state32",
    "radd.forward_ms.b1", "radd.forward_ms.b8", "radd.b1.cached_s", "radd.b1.nfe", "radd.b1.uncached_s",
    "radd.b1.speedup", "radd.b8.cached_s", "radd.b8.nfe", "radd.b8.uncached_s", "radd.b8.speedup",
    "disback.steps_per_s",
]


def _broken_xformers(tmp_path) -> Path:
    """An installed xformers (with dist-info, so diffusers sees it) whose import raises, like a
    wheel built for another torch: diffusers imports it unguarded, so it must be kept out."""
    site = tmp_path / "site"
    (site / "xformers").mkdir(parents=True)
    (site / "xformers" / "__init__.py").write_text('raise ImportError("undefined symbol: _ZN3c10 (other torch)")\n')
    dist = site / "xformers-0.0.35.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xformers\nVersion: 0.0.35\n")
    return site


def _env(extra_path=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_tiny_run_reports_every_row_and_the_fallback(tmp_path):
    out, md = tmp_path / "gpu.json", tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--results-md", str(md)],
                       cwd=ROOT, env=_env(_broken_xformers(tmp_path)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| metric | value |" in r.stdout
    assert not md.exists(), "a CPU/tiny run must not write RESULTS.md"
    data = json.loads(out.read_text())
    rows = {row["id"]: row for row in data["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    assert data["env"]["tiny"] is True and "hidden" in data["env"]["xformers"]
    prov = data["provenance"]  # written through benchmarks/_results.py
    assert prov["script"] == "benchmarks/gpu/run.py" and prov["argv"][:1] == ["--tiny"] and prov["machine"]

    # the fallback is reported, never a failure
    assert rows["attention.choice"]["value"] == "sdpa"
    assert "import failed" in rows["attention.choice"]["note"]
    for rid in ("attention.xformers.forward_ms", "attention.xformers.peak_mem_gib", "attention.xformers.rel_diff"):
        assert rows[rid]["status"] == "fallback" and "SDPA used" in rows[rid]["note"], rows[rid]

    for rid, row in rows.items():
        allowed = {"ok", "miss", "fallback"} | ({"unavailable"} if rid.startswith("disback") else set())
        assert row["status"] in allowed, row
        if row["status"] in ("ok", "miss"):
            v = row["value"]
            if v is None:  # only memory, which CPU cannot report
                assert rid.endswith("peak_mem_gib"), row
            elif not isinstance(v, (bool, str)):
                assert math.isfinite(v), row
    # real properties of the CPU run: float32 forwards repeat bit for bit; a float64 state inverts exactly,
    # a float32 state does not
    assert rows["repeat.bitwise"]["value"] is True
    assert rows["bdia.roundtrip.state64"]["value"] <= 1e-10
    assert rows["bdia.roundtrip.state64"]["value"] < rows["bdia.roundtrip.state32"]["value"] < 1e-3
    for b in ("b1", "b8"):
        # the forward timing's closure gets this batch's ids (it once read a name the loop deletes)
        assert rows[f"radd.forward_ms.{b}"]["status"] == "ok" and rows[f"radd.forward_ms.{b}"]["value"] > 0
        assert 1 <= rows[f"radd.{b}.nfe"]["value"] <= 256
        assert rows[f"radd.{b}.cached_s"]["value"] > 0


def test_bad_arguments_name_the_accepted_values():
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--only", "bdia,nope"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr and "attention, repeat, bdia, radd, disback" in r.stderr


def test_real_sizes_refuse_cpu():
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "--tiny" in r.stderr


def test_imports_diffkit_from_a_bare_checkout():
    """Without the editable install (python -S: no .pth finders), diffkit.samplers/distill resolve to
    the top-level folders pyproject maps them to."""
    code = (f"import runpy; ns = runpy.run_path({str(SCRIPT)!r}); ns['ensure_diffkit'](); "
            "import importlib.util as u; print(u.find_spec('diffkit.samplers.bdia').origin); "
            "print(u.find_spec('diffkit.distill.disback').origin)")
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr
    origins = r.stdout.split()
    assert origins == [str(ROOT / "samplers" / "bdia.py"), str(ROOT / "distill" / "disback.py")]


def test_results_markdown_names_card_driver_torch_and_date():
    import runpy

    ns = runpy.run_path(str(SECTIONS))
    rep = ns["Report"]()
    rep.add("bdia.loop_ratio", "BDIA/DDIM loop wall time", 1.05, goal="≤ 1.02", met=False)
    rep.fill("disback", "error", "RuntimeError: boom")
    env = dict(date="2026-01-01 00:00 UTC", card="NVIDIA H100 80GB HBM3", memory_gib=79.1, driver="580.1",
               torch="2.11.0", cuda="13.0", python="3.12.3", diffusers="0.42.1", xformers="0.0.35", total_s=101.0)
    md = ns["markdown"](env, ns["table"](rep))
    for s in ("NVIDIA H100", "driver 580.1", "torch 2.11.0", "2026-01-01", "| BDIA/DDIM loop wall time | 1.05 |",
              "| miss |", "| disback.steps_per_s | — |  |  | error | RuntimeError: boom |"):
        assert s in md, s
