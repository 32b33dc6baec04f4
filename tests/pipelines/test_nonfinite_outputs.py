"""NaN weights never give an image: every diffkit sampling loop (the pipelines, the functional
EDM/BDIA samplers) checks the model output with the one ``diffkit.numerics.FiniteWatch`` and
raises ``NonFiniteOutputError`` naming the step; ``diffkit sample`` / ``sample-edm`` exit 1."""

import functools
import math

import pytest
import torch
from diffusers import DDIMScheduler

from diffkit.cli import main
from diffkit.models.radd import tiny_radd_transformer
from diffkit.numerics import FiniteWatch, NonFiniteOutputError
from diffkit.pipelines import class_conditional
from diffkit.pipelines.class_conditional import ClassConditionalPipeline
from diffkit.pipelines.discrete import DiscreteDiffusionPipeline
from diffkit.pipelines.one_step import OneStepPipeline
from diffkit.samplers import bdia_ddim, edm

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _nan_pipeline(tmp_path, unet, kind) -> str:
    with torch.no_grad():
        unet.conv_out.bias.fill_(float("nan"))
    pipe = (ClassConditionalPipeline(unet, DDIMScheduler()) if kind == "ddim"
            else OneStepPipeline(unet, DDIMScheduler(), generator_timestep=399))
    pipe.save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")


@pytest.mark.parametrize("kind", ["ddim", "one-step"])
def test_sample_with_nan_weights_exits_nonzero_naming_the_step(tmp_path, tiny_class_unet, capsys, kind):
    model, out = _nan_pipeline(tmp_path, tiny_class_unet, kind), tmp_path / "s.png"
    assert main(["sample", "--model", model, "--steps", "3", "--n", "4", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "NaN or inf at step 0 (timestep" in err and not out.exists(), err


@pytest.mark.parametrize("sampler", ["edm-heun", "bdia-euler"])
def test_sample_edm_with_nan_weights_exits_nonzero_naming_the_step(tmp_path, tiny_class_unet, capsys, sampler):
    model, out = _nan_pipeline(tmp_path, tiny_class_unet, "ddim"), tmp_path / "s.png"
    assert main(["sample-edm", "--model", model, "--sampler", sampler, "--nfe", "3", "--n", "4",
                 "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "NaN or inf at step 0 (sigma" in err and not out.exists(), err


class _BadAt:
    """A Gaussian-data denoiser (exact for N(0, I) data) that returns NaN at one noise level."""

    def __init__(self, bad_sigma):
        self.bad_sigma = bad_sigma

    def __call__(self, x, sigma):
        out = x / (1 + sigma.reshape(-1, 1) ** 2)
        return torch.where(sigma.reshape(-1, 1) == self.bad_sigma, torch.full_like(out, math.nan), out)


SIGMAS = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("fn, step", [(edm.sample_euler, 2), (edm.sample_heun, 1), (edm.sample_bdia_euler, 2),
                                      (edm.sample_bdia_heun, 1)])
def test_edm_samplers_raise_naming_the_step(fn, step):
    # Heun evaluates σ = 2 first as the correction of step 1 (from σ = 5)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    with pytest.raises(NonFiniteOutputError, match=f"NaN or inf at step {step} \\(sigma 2.0\\)"):
        fn(_BadAt(2.0), x, SIGMAS, disable=True)
    out = fn(_BadAt(3.0), x, SIGMAS, disable=True)  # a level not on the grid: no error
    assert torch.isfinite(out).all()


def test_bdia_inverse_and_start_pair_raise_naming_the_step():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(NonFiniteOutputError, match="step 3 \\(sigma 1.0\\)"):
        edm.bdia_start_pair(_BadAt(1.0), x, SIGMAS)
    with pytest.raises(NonFiniteOutputError, match="step 1 \\(sigma 5.0\\)"):
        edm.invert_bdia_euler(_BadAt(5.0), (x, x), SIGMAS, disable=True, gamma=1.0)


def test_discrete_pipeline_raises_on_nan_logits_and_allows_minus_inf():
    model = tiny_radd_transformer(vocab_size=6, hidden_size=16, n_heads=2, n_blocks=1, length=8)

    class NoZero(torch.nn.Module):  # token 0 impossible: log-prob -inf is a valid output
        config, mask_token_id = model.config, model.mask_token_id

        def forward(self, ids):
            out = model(ids).clone()
            out[..., 0] = -math.inf
            return out

    pipe = DiscreteDiffusionPipeline.from_model(NoZero())
    ids = pipe(batch_size=2, num_inference_steps=4, output_type="ids").sequences
    assert (ids != 0).all()
    with torch.no_grad():
        model.output_layer.linear.bias.fill_(float("nan"))
    pipe = DiscreteDiffusionPipeline.from_model(model)
    with pytest.raises(NonFiniteOutputError, match="transformer output contains NaN or \\+inf at step 0"):
        pipe(batch_size=2, num_inference_steps=4, output_type="ids", use_cache=False)
    with pytest.raises(NonFiniteOutputError, match="NaN or \\+inf at step"):  # the first step that reveals
        pipe(batch_size=2, num_inference_steps=4, output_type="ids")


def test_deferred_checks_report_the_first_bad_step_at_the_end_of_the_loop(monkeypatch, tiny_class_unet):
    # the accelerator path (a device-side flag, read once after the loop), exercised on CPU
    assert bdia_ddim.FiniteWatch is FiniteWatch and edm.FiniteWatch is FiniteWatch  # one watch, from diffkit.numerics
    deferred = functools.partial(FiniteWatch, deferred=True)
    monkeypatch.setattr(edm, "FiniteWatch", deferred)
    calls = []
    bad = _BadAt(5.0)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    with pytest.raises(NonFiniteOutputError, match="step 1 \\(sigma 5.0\\)"):
        edm.sample_euler(lambda x, s: calls.append(1) or bad(x, s), x, SIGMAS, disable=True)
    assert len(calls) == 4  # the loop ran to its end: no per-step sync
    monkeypatch.setattr(class_conditional, "FiniteWatch", deferred)
    with torch.no_grad():
        tiny_class_unet.conv_out.bias.fill_(float("nan"))
    pipe = ClassConditionalPipeline(tiny_class_unet, DDIMScheduler())
    with pytest.raises(NonFiniteOutputError, match="step 0 \\(timestep 666\\)"):
        pipe(class_labels=[1, 2], num_inference_steps=3, output_type="pt", progress=False)
