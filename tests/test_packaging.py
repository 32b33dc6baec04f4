"""Installs expose only the diffkit namespace: no top-level `samplers`/`distill` modules."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

CHECK = (
    "import importlib.util as u, json; "
    "print(json.dumps({n: (u.find_spec(n) is not None) for n in "
    "['diffkit', 'diffkit.samplers', 'diffkit.distill', 'samplers', 'distill']}))"
)


def _base_python() -> str:
    # the interpreter the project's venv was made from (venvs of venvs inherit its site-packages)
    return getattr(sys, "_base_executable", sys.executable)


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install_exposes_only_namespaced_packages(tmp_path, editable):
    import json

    venv = tmp_path / "venv"
    # no pip/setuptools of its own (3.11's ensurepip would bring an old setuptools without
    # bdist_wheel): this environment's pip installs into it with --python
    subprocess.run([_base_python(), "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # let the throwaway venv see this environment's packages (setuptools with bdist_wheel, torch, ...)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    Path(purelib, "_diffkit_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp_path / "src"
    # install from a copy so the build does not write into the checkout (egg-info, build/)
    import shutil

    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "assets", "demo-output", "build",
                                                             "*.egg-info", "__pycache__", "benchmarks"))
    cmd = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index"]
    cmd += ["-e", str(src)] if editable else [str(src)]
    env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    r = subprocess.run([str(py), "-c", CHECK], cwd=outside, capture_output=True, text=True, check=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    found = json.loads(r.stdout)
    assert found == {"diffkit": True, "diffkit.samplers": True, "diffkit.distill": True,
                     "samplers": False, "distill": False}
    assert not (Path(purelib) / "samplers").exists() and not (Path(purelib) / "distill").exists()
