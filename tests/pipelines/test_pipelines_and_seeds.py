"""Per-sample seeds, the class-conditional pipeline, tiny SD/SDXL rigs, sampler registry."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from diffkit.pipelines import load_pipeline
from diffkit.pipelines.class_conditional import ClassConditionalPipeline
from diffkit.registry import available_samplers, get_sampler, make_scheduler
from diffkit.seeding import randint_for_indices, randn_for_indices, sample_seed


def test_noise_for_sample_k_is_independent_of_batching():
    full = randn_for_indices((1, 8, 8), range(8), base_seed=123)
    ones = torch.cat([randn_for_indices((1, 8, 8), [k], base_seed=123) for k in range(8)])
    fours = torch.cat([randn_for_indices((1, 8, 8), range(s, s + 4), base_seed=123) for s in (0, 4)])
    assert torch.equal(full, ones) and torch.equal(full, fours)
    assert not torch.equal(full[0], full[1])
    assert not torch.equal(full, randn_for_indices((1, 8, 8), range(8), base_seed=124))
    assert not torch.equal(full, randn_for_indices((1, 8, 8), range(8), base_seed=123, stream="other"))
    assert sample_seed(1, 5) != sample_seed(1, 6) and sample_seed(1, 5) == sample_seed(1, 5)
    r = randint_for_indices(0, 1000, range(100), 7)
    assert r.min() >= 0 and r.max() < 1000 and len(set(r.tolist())) > 50
    with pytest.raises(ValueError, match="index"):
        sample_seed(0, -1)


def test_pipeline_samples_do_not_depend_on_batch_size(tiny_class_unet):
    pipe = ClassConditionalPipeline(tiny_class_unet, DDIMScheduler())
    kw = dict(num_inference_steps=4, guidance_scale=2.0, seed=5, output_type="pt", progress=False)
    four = pipe([0, 1, 2, 3], **kw).images
    singles = torch.cat([pipe([k], sample_indices=[k], **kw).images for k in range(4)])
    # same initial noise; the UNet's batched matmuls differ from single ones only by float32 roundoff
    assert torch.allclose(four, singles, atol=1e-4)
    # a later shard (indices 2, 3) reproduces the same samples
    assert torch.allclose(pipe([2, 3], sample_indices=[2, 3], **kw).images, four[2:], atol=1e-4)


def test_pipeline_keeps_its_scheduler_and_round_trips(tiny_class_unet, tmp_path):
    pipe = ClassConditionalPipeline(tiny_class_unet, EulerDiscreteScheduler())
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)  # diffusers' DDIMPipeline would convert it
    out = pipe([3, 7], num_inference_steps=5, output_type="pt", progress=False)
    assert out.nfe == 5 and torch.isfinite(out.images).all()
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == "ClassConditionalPipeline"
    again = load_pipeline(tmp_path / "p")
    assert isinstance(again.scheduler, EulerDiscreteScheduler)
    out2 = again([3, 7], num_inference_steps=5, output_type="pt", progress=False)
    assert torch.equal(out.images, out2.images)
    with pytest.raises(ValueError, match=r"class_labels is required.*0\.\.9"):
        pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe([1], output_type="jpg")


def test_tiny_sd_and_sdxl_generate(tiny_sd, tiny_sdxl):
    for pipe in (tiny_sd, tiny_sdxl):
        img = pipe("a cat", num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                   output_type="np", height=32, width=32).images
        assert img.shape == (1, 32, 32, 3) and (img >= 0).all() and (img <= 1).all()


def test_registry():
    assert "ddim" in available_samplers()
    sched = make_scheduler("euler", DDIMScheduler(beta_schedule="scaled_linear").config)
    assert isinstance(sched, EulerDiscreteScheduler) and sched.config.beta_schedule == "scaled_linear"
    with pytest.raises(ValueError, match="unknown sampler 'nope'; registered samplers: .*ddim"):
        get_sampler("nope")


def test_load_pipeline_errors(tmp_path):
    from diffkit.assets import AssetError

    with pytest.raises(AssetError, match="not found"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(AssetError, match="rebuild it with `diffkit train-teacher"):
        load_pipeline(tmp_path / "digits-unet")
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="neither a model_index.json"):
        load_pipeline(tmp_path / "x")


def _diffkit_schedulers():
    from diffkit.registry import _REGISTRY

    return sorted(e.name for e in _REGISTRY.values() if e.kind == "scheduler" and e.target.startswith("diffkit."))


@pytest.mark.parametrize("name", _diffkit_schedulers())
def test_sd_pipeline_with_diffkit_scheduler_saves_and_reloads(name, tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    entry = get_sampler(name)
    scheduler = make_scheduler(name, tiny_sd.scheduler.config)
    pipe = StableDiffusionPipeline(**{**tiny_sd.components, "scheduler": scheduler})
    pipe.save_pretrained(tmp_path / "sd")
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    module = entry.target.partition(":")[0]
    assert index["scheduler"] == [module, entry.target.partition(":")[2]]
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert type(again.scheduler) is entry.load()
    strip = lambda c: {k: v for k, v in c.items() if k != "_use_default_values"}  # noqa: E731 (bookkeeping key)
    assert strip(again.scheduler.config) == strip(pipe.scheduler.config)


# ------------------------------------------------------------------ entrances: config, counts, one-step refusal
def _one_step(unet, timestep=123):
    from diffkit.pipelines.one_step import OneStepPipeline
    from diffkit.testing import tiny_ddim_scheduler

    return OneStepPipeline(unet, tiny_ddim_scheduler(), generator_timestep=timestep)


def test_pipeline_with_sampler_keeps_the_registered_config(tiny_class_unet, tiny_sd):
    from diffkit.registry import pipeline_with_sampler

    one = _one_step(tiny_class_unet)
    new = pipeline_with_sampler(one, "euler")
    assert new is not one and new.config.generator_timestep == 123 and new.unet is one.unet
    assert isinstance(new.scheduler, EulerDiscreteScheduler) and isinstance(one.scheduler, DDIMScheduler)
    assert tiny_sd.config.requires_safety_checker is False  # a non-default value the rebuild must carry
    sd = pipeline_with_sampler(tiny_sd, "euler")
    assert sd.config.requires_safety_checker is False and isinstance(sd.scheduler, EulerDiscreteScheduler)
    assert {k: v for k, v in sd.config.items() if k != "scheduler"} == \
        {k: v for k, v in tiny_sd.config.items() if k != "scheduler"}


def test_pipelines_refuse_step_counts_and_batch_sizes_below_one(tiny_class_unet, tiny_unet):
    from diffkit.testing import tiny_ddim_scheduler

    for pipe in (ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler()), _one_step(tiny_class_unet)):
        for steps in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match=rf"num_inference_steps must be an integer >= 1, got {steps!r}"):
                pipe([1], num_inference_steps=steps, output_type="pt", progress=False)
        with pytest.raises(ValueError, match=r"class_labels: at least one label is needed, got 0"):
            pipe([], num_inference_steps=2, output_type="pt", progress=False)
    for pipe in (ClassConditionalPipeline(tiny_unet, tiny_ddim_scheduler()), _one_step(tiny_unet)):
        for n in (0, -2):
            with pytest.raises(ValueError, match=rf"batch_size must be an integer >= 1, got {n}"):
                pipe(batch_size=n, num_inference_steps=2, output_type="pt", progress=False)


def test_one_step_generator_is_refused_by_the_apis_that_need_a_diffusion_model(tiny_class_unet):
    from diffkit.metrics import ModelSamples
    from diffkit.pipelines.editing import edit
    from diffkit.sampling import generate

    one = _one_step(tiny_class_unet)
    msg = r"is a one-step generator \(OneStepPipeline\): it supports .*needs a diffusion model such as digits-unet"
    for sampler in ("edm-euler", "ddim"):  # the driver names the flag
        with pytest.raises(ValueError, match=rf"one-step generator .*; --sampler {sampler} needs a diffusion model"):
            generate(one, sampler, nfe=3, condition=[1, 2])
    with pytest.raises(ValueError, match="a one-step generator takes no sampler options"):
        generate(one, None, condition=[1, 2], options={"gamma": 0.5})
    with pytest.raises(ValueError, match=msg):
        edit(one, torch.zeros(1, 1, 8, 8), 3, 8, steps=4)
    for sampler in ("ddim", "edm-heun"):
        with pytest.raises(ValueError, match=msg):
            ModelSamples(one, sampler).build("cpu")


def test_functional_sampling_refuses_counts_below_one(tiny_class_unet, tiny_unet):
    from diffkit.sampling import generate
    from diffkit.testing import tiny_ddim_scheduler

    pipe = ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler())
    with pytest.raises(ValueError, match=r"nfe must be an integer >= 1, got 0"):
        generate(pipe, "edm-euler", nfe=0, condition=[1])
    with pytest.raises(ValueError, match=r"labels: at least one label is needed, got 0"):
        generate(pipe, "edm-euler", nfe=3, condition=[])
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got 0"):
        generate(ClassConditionalPipeline(tiny_unet, tiny_ddim_scheduler()), "edm-euler", nfe=3, n=0)
