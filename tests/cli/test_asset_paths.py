"""README commands from any directory: asset names and ``assets/<name>`` paths, local files only."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffkit.assets import AssetError, asset_path, assets_root
from diffkit.cli import main
from helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """cwd = an empty temporary folder (no ./assets), DIFFKIT_ASSETS unset."""
    monkeypatch.delenv("DIFFKIT_ASSETS", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_sample_command_runs_outside_the_repository(elsewhere, capsys):
    out = elsewhere / "s.png"
    assert main(["sample", "--model", "assets/digits-unet", "--steps", "2", "--n", "2", "--output", str(out)]) == 0, \
        capsys.readouterr().err
    assert out.is_file() and "wrote 2 samples" in capsys.readouterr().out


def test_asset_paths_resolve_and_other_missing_paths_name_the_asset(elsewhere):
    shipped = assets_root() / "digits-unet"
    for spelling in ("digits-unet", "assets/digits-unet", "./assets/digits-unet", "../x/assets/digits-unet"):
        assert asset_path(spelling) == shipped, spelling
    with pytest.raises(AssetError, match=r"not found at runs/digits-unet; for the shipped one pass the asset name "
                                         r"`digits-unet`.*rebuild it with `diffkit train-teacher"):
        asset_path("runs/digits-unet")
    with pytest.raises(AssetError, match=r"this model not found at assets/nothing$"):
        asset_path("assets/nothing")
    from diffkit.pipelines.discrete import load_text_pipeline

    assert load_text_pipeline("assets/text-radd").tokenizer.kind == "char"
    (elsewhere / "assets" / "digits-unet").mkdir(parents=True)   # an existing folder is used as given
    assert asset_path("assets/digits-unet") == Path("assets/digits-unet")


def test_pipelines_are_exported_lazily_from_the_package():
    from diffkit.pipelines import ClassConditionalPipeline, DiscreteDiffusionPipeline, OneStepPipeline, load_pipeline

    assert {c.__name__ for c in (ClassConditionalPipeline, DiscreteDiffusionPipeline, OneStepPipeline)} == \
        {"ClassConditionalPipeline", "DiscreteDiffusionPipeline", "OneStepPipeline"} and callable(load_pipeline)
    code = ("import json, sys, diffkit.pipelines; "
            "print(json.dumps([m for m in ('torch', 'diffusers') if m in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr


# The child process: no HF_HUB_OFFLINE, and every socket / DNS call is recorded and refused.
_NO_NETWORK = r"""
import json, os, socket, sys
attempts = []
def refuse(*a, **k):
    attempts.append(repr(a[1:] if a and isinstance(a[0], socket.socket) else a)[:120])
    raise OSError("network refused by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
results = {}
def attempt(name, fn):
    try:
        results[name] = ["ok", fn()]
    except Exception as e:
        results[name] = [type(e).__name__, str(e)]
from diffkit.pipelines import ClassConditionalPipeline, DiscreteDiffusionPipeline, OneStepPipeline
from diffkit.models.tokenizers import gpt2_tokenizer, load_tokenizer
attempt("unet", lambda: type(ClassConditionalPipeline.from_pretrained("assets/digits-unet")).__name__)
attempt("onestep", lambda: type(OneStepPipeline.from_pretrained("digits-onestep")).__name__)
attempt("text", lambda: DiscreteDiffusionPipeline.from_pretrained("assets/text-radd").tokenizer.kind)
attempt("missing", lambda: ClassConditionalPipeline.from_pretrained("assets/nothing-here"))
attempt("hub_id", lambda: ClassConditionalPipeline.from_pretrained("someone/some-model"))
attempt("gpt2", lambda: load_tokenizer("gpt2").vocab_size)            # in the (test's) cache
attempt("gpt2_missing", lambda: gpt2_tokenizer("someone/gpt2-copy"))  # not in it
print(json.dumps({"results": results, "attempts": attempts}))
"""


def _fake_gpt2_cache(hub: Path) -> None:
    """A Hugging Face cache entry for ``gpt2`` with a 50,257-token byte-level BPE (made-up merges)."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())  # the 256 symbols byte-level BPE writes bytes as
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    for a in chars:
        for b in chars:
            if len(vocab) == 50256:
                break
            merges.append(f"{a} {b}")
            vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = 50256
    snap = hub / "models--gpt2" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "vocab.json").write_text(json.dumps(vocab))
    (snap / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (hub / "models--gpt2" / "refs").mkdir()
    (hub / "models--gpt2" / "refs" / "main").write_text("0" * 40)


def _run_offline_child(cwd: Path, hf_home: Path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFKIT_ASSETS", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(hf_home), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _NO_NETWORK], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_pipelines_and_tokenizer_never_touch_the_network(tmp_path):
    """From a temporary cwd with the Hub not switched off: shipped assets load by name or by
    ``assets/<name>``, a missing folder or a Hub id is a local error, GPT-2's tokenizer comes from
    the local cache or is reported missing -- and no socket is ever opened."""
    (tmp_path / "work").mkdir()
    _fake_gpt2_cache(tmp_path / "hf" / "hub")
    res = _run_offline_child(tmp_path / "work", tmp_path / "hf")
    r = res["results"]
    assert res["attempts"] == [], res
    assert r["unet"] == ["ok", "ClassConditionalPipeline"] and r["onestep"] == ["ok", "OneStepPipeline"]
    assert r["text"] == ["ok", "char"]
    assert r["missing"][0] == "AssetError" and "not found at assets/nothing-here" in r["missing"][1]
    assert r["hub_id"][0] == "AssetError" and "not found at someone/some-model" in r["hub_id"][1]
    assert r["gpt2"] == ["ok", 50257]
    assert r["gpt2_missing"][0] == "FileNotFoundError" and "not available locally" in r["gpt2_missing"][1]
