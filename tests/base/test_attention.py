"""enable_best: xformers only when a real op runs; SDPA otherwise, with the documented warnings."""

import sys
import textwrap
import warnings

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import diffkit.attention as attention


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(attention, "_warned", set())
    for name in list(sys.modules):
        if name == "xformers" or name.startswith("xformers."):
            monkeypatch.delitem(sys.modules, name)
    yield
    for name in list(sys.modules):
        if name == "xformers" or name.startswith("xformers."):
            del sys.modules[name]


def _fake_xformers(tmp_path, monkeypatch, init_body: str, ops_body: str = ""):
    pkg = tmp_path / "xformers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(init_body))
    (pkg / "ops.py").write_text(textwrap.dedent(ops_body))
    monkeypatch.syspath_prepend(str(tmp_path))


def _all_sdpa(model):
    mods = attention.attention_modules(model)
    return len(mods) > 0 and all(isinstance(m.processor, AttnProcessor2_0) for m in mods)


def test_absent_is_silent(tiny_unet, monkeypatch):
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = attention.enable_best(tiny_unet)
    assert choice.backend == "sdpa" and choice.reason == "not installed" and _all_sdpa(tiny_unet)


def test_absent_but_requested_warns(tiny_unet, monkeypatch):
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    with pytest.warns(UserWarning, match=r"xformers unusable \(not installed\); using PyTorch SDPA"):
        assert attention.enable_best(tiny_unet, prefer="xformers").backend == "sdpa"


def test_broken_import_warns_once_and_falls_back(tiny_unet, tmp_path, monkeypatch):
    _fake_xformers(tmp_path, monkeypatch, "raise RuntimeError('built for torch 2.10.0+cu128')")
    with pytest.warns(UserWarning) as rec:
        choice = attention.enable_best(tiny_unet)
        attention.enable_best(tiny_unet)  # second call: no second warning
    msgs = [str(w.message) for w in rec if "xformers" in str(w.message)]
    assert msgs == ["xformers unusable (import failed: RuntimeError: built for torch 2.10.0+cu128); using PyTorch SDPA"]
    assert choice.backend == "sdpa" and _all_sdpa(tiny_unet)


def test_failing_op_warns_and_falls_back(tiny_unet, tmp_path, monkeypatch):
    _fake_xformers(tmp_path, monkeypatch, "", """
        def memory_efficient_attention(q, k, v, **kw):
            raise NotImplementedError('No operator found for memory_efficient_attention_forward')
    """)
    with pytest.warns(UserWarning,
                      match=r"probe op failed on cpu/torch.float32: NotImplementedError: No operator found"):
        choice = attention.enable_best(tiny_unet)
    assert choice.backend == "sdpa" and _all_sdpa(tiny_unet)


def test_working_op_is_used_when_diffusers_accepts_it(tiny_unet, tmp_path, monkeypatch):
    # a fake xformers whose op works: the probe passes; diffusers then refuses on CPU, which must
    # also fall back (with a warning naming diffusers), never raise
    _fake_xformers(tmp_path, monkeypatch, "", """
        import torch
        def memory_efficient_attention(q, k, v, **kw):
            sdpa = torch.nn.functional.scaled_dot_product_attention
            return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    """)
    ok, reason = attention.probe_xformers("cpu", torch.float32)
    assert ok, reason
    with pytest.warns(UserWarning, match="diffusers could not enable it"):
        choice = attention.enable_best(tiny_unet)
    assert choice.backend == "sdpa"


def test_prefer_validation_and_pipeline(tiny_sd):
    with pytest.raises(ValueError, match="prefer must be"):
        attention.enable_best(tiny_sd, prefer="flash")
    assert attention.enable_best(tiny_sd, prefer="sdpa").backend == "sdpa"
    assert _all_sdpa(tiny_sd.unet)
