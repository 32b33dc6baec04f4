"""Editing by inversion: source = target returns the input (digits teacher, tiny SD), EDICT's exact
inverse, DDIM inversion's inexactness, bad input, the CLI/demo, the example and the benchmark."""

import runpy

import pytest
import torch

from diffkit.conditioning import class_guidance
from diffkit.denoisers import EpsModel
from diffkit.pipelines.editing import edit, prepare_image
from diffkit.samplers import ddim_inversion, edict
from diffkit.samplers.edict import edict_inverse_step, edict_step
from diffkit.samplers.inversion import relative_error
from helpers import ROOT

TOL = 1e-10  # acceptance: latent round trip with the float64 state


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def digits():
    from diffkit.data import digits_tensors
    from diffkit.pipelines import load_pipeline

    pipe = load_pipeline("digits-unet")
    pipe.set_progress_bar_config(disable=True)
    x, y = digits_tensors("test")
    return pipe, x[:3], y[:3]


# ---------------------------------------------------------------------- source = target
@pytest.mark.parametrize("method", ["bdia", "edict"])
def test_source_equals_target_returns_the_digit(digits, method):
    pipe, x, y = digits
    out = edit(pipe, x, y, y, steps=12, strength=1.0, method=method, reconstruct=True)
    assert out.latent_error <= TOL
    assert torch.equal(out.latent, out.reconstruction_latent)  # target = source: the edit is the reconstruction
    assert out.vae_error == 0.0 and out.pixel_error <= 1e-6  # no VAE: pixel space is the latent
    assert out.nfe["regeneration"] == (11 if method == "bdia" else 24)


def test_source_equals_target_tiny_sd_up_to_the_vae(tiny_sd):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = edit(tiny_sd, image, "a photo of a cat", "a photo of a dog", steps=10, strength=0.8, reconstruct=True)
    assert out.latent_error <= TOL
    # exact inversion leaves only the VAE's own error in pixel space
    assert abs(out.pixel_error - out.vae_error) <= 1e-6 * max(out.vae_error, 1.0)
    assert out.image.shape == image.shape and not torch.equal(out.latent, out.reconstruction_latent)


def test_ddim_inversion_is_not_exact_and_edits_change_the_digit(digits):
    from diffkit.metrics.digits import classify

    pipe, x, y = digits
    ddim = edit(pipe, x, y, steps=10, method="ddim-inversion", reconstruct=True)
    assert ddim.latent_error > 1e-3  # the inexact baseline, same grid
    target = (y + 5) % 10
    out = edit(pipe, x, y, target, steps=10, strength=1.0)
    assert (out.image - out.source_image).abs().max() > 0.5
    assert (classify(out.image) == target.numpy()).mean() >= 2 / 3


# ---------------------------------------------------------------------- EDICT
def test_edict_step_inverse_is_exact_for_a_nonlinear_eps():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4
    eps_fn = lambda z: torch.tanh(z @ w) + 0.3 * z  # noqa: E731
    x, y = torch.randn(3, 16, generator=g, dtype=torch.float64), torch.randn(3, 16, generator=g, dtype=torch.float64)
    x2, y2 = edict_step(x, y, eps_fn, 1.02, -0.05, 0.93)
    xb, yb = edict_inverse_step(x2, y2, eps_fn, 1.02, -0.05, 0.93)
    assert relative_error(xb, x) < 1e-14 and relative_error(yb, y) < 1e-14
    assert relative_error(x2, x) > 1e-3  # the step did something


def test_edict_and_ddim_loops_on_a_tiny_unet(tiny_class_unet):
    from diffkit.testing import tiny_ddim_scheduler

    cfg = tiny_ddim_scheduler().config
    model = EpsModel(tiny_class_unet, cfg)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cond = class_guidance(tiny_class_unet, [1, 2], 2.0)
    r = edict.invert(model, x, cond, steps=10)
    assert r.settings["nfe"] == 20
    assert relative_error(edict.regenerate(model, r, cond), x) <= TOL
    d = ddim_inversion.invert(model, x, cond, steps=10, scheduler_config=cfg)
    assert relative_error(ddim_inversion.regenerate(model, d, cond, scheduler_config=cfg), x) > 1e-4
    with pytest.raises(ValueError, match="mix"):
        edict.invert(model, x, cond, steps=10, mix=0.0)
    with pytest.raises(ValueError, match="scheduler_config"):
        ddim_inversion.invert(model, x, cond, steps=10)


def test_edict_and_ddim_regenerate_use_the_callers_guidance_scale(tiny_class_unet):
    from diffkit.testing import tiny_ddim_scheduler

    cfg = tiny_ddim_scheduler().config
    model = EpsModel(tiny_class_unet, cfg)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    at = lambda w: class_guidance(tiny_class_unet, [1, 2], w)  # noqa: E731
    r = edict.invert(model, x, at(2.0), steps=4)
    edited = edict.regenerate(model, r, at(4.0))
    assert torch.equal(edited, edict.regenerate(model, r, at(2.0), guidance_scale=4.0))
    assert relative_error(edited, x) > 1e-4 and relative_error(edict.regenerate(model, r, at(2.0)), x) <= TOL
    d = ddim_inversion.invert(model, x, at(2.0), steps=4, scheduler_config=cfg)
    edited = ddim_inversion.regenerate(model, d, at(4.0), scheduler_config=cfg)
    assert torch.equal(edited, ddim_inversion.regenerate(model, d, at(2.0), guidance_scale=4.0, scheduler_config=cfg))
    assert not torch.equal(edited, ddim_inversion.regenerate(model, d, at(2.0), scheduler_config=cfg))


# ---------------------------------------------------------------------- bad input
def test_image_conversion_and_rejection(digits, tmp_path):
    from PIL import Image

    pipe, x, y = digits
    path = tmp_path / "rgb.png"
    Image.new("RGB", (20, 24), (255, 0, 0)).save(path)
    assert prepare_image(str(path), 1, 8).shape == (1, 1, 8, 8)  # converted to grey, resized
    assert prepare_image(torch.zeros(1, 1, 16, 16), 1, 8).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="3 channel.*1-channel"):
        edit(pipe, torch.zeros(1, 3, 8, 8), 3, 8)
    with pytest.raises(ValueError, match="size 16x16.*8x8.*resize"):
        edit(pipe, torch.zeros(1, 1, 16, 16), 3, 8, resize=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        edit(pipe, torch.full((1, 1, 8, 8), 255.0), 3, 8)
    with pytest.raises(FileNotFoundError, match="image"):
        edit(pipe, str(tmp_path / "missing.png"), 3, 8)


def test_condition_errors(digits, tiny_sd):
    pipe, x, y = digits
    with pytest.raises(ValueError, match=r"target: class label\(s\) \[12\] out of range.*0\.\.9"):
        edit(pipe, x[:1], 3, 12)
    with pytest.raises(ValueError, match="source: this pipeline is class-conditional"):
        edit(pipe, x[:1], "a three", 8)
    with pytest.raises(ValueError, match="method must be one of"):
        edit(pipe, x[:1], 3, 8, method="null-text")
    image = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="target: an empty prompt"):
        edit(tiny_sd, image, "a photo of a cat", "  ")
    with pytest.raises(ValueError, match="source: this pipeline is prompt-conditioned"):
        edit(tiny_sd, image, None, "a photo of a dog")


# ---------------------------------------------------------------------- CLI, demo, example, benchmark
def test_cli_edit_writes_before_after_png(tmp_path, capsys):
    from diffkit.cli import main

    out = tmp_path / "edit.png"
    assert main(["edit", "--digit", "0", "--target", "8", "--steps", "6", "--reconstruct", "--output", str(out)]) == 0
    assert out.exists()
    text = capsys.readouterr().out
    assert "-> 8" in text and "latent relative error" in text


def test_demo_step(tmp_path):
    from diffkit.commands import edit as edit_cmd
    from diffkit.commands._demo import DemoContext

    ctx = DemoContext(str(tmp_path), quick=True)
    edit_cmd.demo_step(ctx)
    assert (tmp_path / "edit_3_to_8.png").exists()
    assert "latent error" in ctx.report[-1]


def test_benchmark_quick_runs(capsys):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "editing.py"))
    n = torch.get_num_threads()
    try:
        mod["main"](["--quick", "--only", "round_trip,equal_nfe,overhead"])
    finally:
        torch.set_num_threads(n)
    text = capsys.readouterr().out
    assert "Round trip" in text and "Equal model evaluations" in text and "Scheduler step time" in text
