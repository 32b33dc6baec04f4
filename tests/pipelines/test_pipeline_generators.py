"""diffkit's image pipelines: ``generator=`` follows diffusers, ``seed=`` keeps per-index noise."""

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffkit.pipelines.class_conditional import ClassConditionalPipeline
from diffkit.pipelines.one_step import OneStepPipeline
from diffkit.testing import tiny_ddim_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(num_inference_steps=3, output_type="pt", progress=False)


def _pipes(unet):
    return (ClassConditionalPipeline(unet, tiny_ddim_scheduler()),
            OneStepPipeline(unet, tiny_ddim_scheduler(), generator_timestep=399))


def _shape(unet, n):
    c = unet.config
    return (n, c.in_channels, c.sample_size, c.sample_size)


def test_generator_draws_diffusers_noise_and_advances_between_calls(tiny_class_unet):
    labels = [1, 2, 3]
    for pipe in _pipes(tiny_class_unet):
        g = torch.Generator().manual_seed(7)
        first = pipe(labels, generator=g, **KW).images
        second = pipe(labels, generator=g, **KW).images      # the generator advanced: new noise
        assert not torch.equal(first, second)
        ref = torch.Generator().manual_seed(7)
        noise = [randn_tensor(_shape(tiny_class_unet, 3), generator=ref, dtype=torch.float32) for _ in range(2)]
        assert torch.equal(first, pipe(labels, latents=noise[0], **KW).images)
        assert torch.equal(second, pipe(labels, latents=noise[1], **KW).images)
        # a list: one generator per sample, as diffusers' randn_tensor draws it
        gens = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
        listed = pipe(labels, generator=gens, **KW).images
        ref = randn_tensor(_shape(tiny_class_unet, 3), generator=[torch.Generator().manual_seed(s) for s in (4, 5, 6)],
                           dtype=torch.float32)
        assert torch.equal(listed, pipe(labels, latents=ref, **KW).images)


def test_generator_matches_diffusers_ddim_pipeline_with_eta(tiny_unet):
    """Unconditional, eta > 0: the initial noise and every step's variance noise come from the
    generator exactly as in diffusers' own DDIMPipeline."""
    sched = DDIMScheduler()
    ours = ClassConditionalPipeline(tiny_unet, sched)(batch_size=2, eta=0.7,
                                                      generator=torch.Generator().manual_seed(3), **KW).images
    theirs = DDIMPipeline(tiny_unet, DDIMScheduler())(
        batch_size=2, num_inference_steps=3, eta=0.7, generator=torch.Generator().manual_seed(3),
        output_type="np").images
    assert torch.equal((ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1), torch.from_numpy(theirs))


def test_seed_path_is_reproducible_and_batch_independent_with_step_noise(tiny_class_unet):
    """eta > 0 draws noise in every step: on the seed path it comes from (seed, sample index), not
    from torch's global generator."""
    pipe = ClassConditionalPipeline(tiny_class_unet, tiny_ddim_scheduler())
    kw = dict(KW, eta=1.0, seed=11)
    torch.manual_seed(0)
    a = pipe([0, 1, 2, 3], **kw).images
    torch.manual_seed(1)
    b = pipe([0, 1, 2, 3], **kw).images
    assert torch.equal(a, b)
    halves = torch.cat([pipe([0, 1], sample_indices=[0, 1], **kw).images,
                        pipe([2, 3], sample_indices=[2, 3], **kw).images])
    assert torch.allclose(a, halves, atol=1e-4)  # batched vs split UNet matmuls: float32 round-off only


def test_seed_default_repeats_and_sample_indices_continue(tiny_class_unet):
    for pipe in _pipes(tiny_class_unet):
        a, b = pipe([1, 2], **KW).images, pipe([1, 2], **KW).images
        assert torch.equal(a, b)                              # documented: seed=0 repeats the noise
        assert torch.equal(a, pipe([1, 2], seed=0, **KW).images)
        c = pipe([1, 2], sample_indices=[2, 3], **KW).images  # the next chunk of a set
        assert not torch.equal(a, c)
        assert "repeat" in type(pipe).__call__.__doc__


def test_seed_and_generator_together_are_refused(tiny_class_unet):
    g = torch.Generator().manual_seed(0)
    for pipe in _pipes(tiny_class_unet):
        with pytest.raises(ValueError, match=r"seed.*generator|generator.*seed"):
            pipe([1], seed=3, generator=g, **KW)
        with pytest.raises(ValueError, match=r"sample_indices.*generator|generator.*sample_indices"):
            pipe([1, 2], sample_indices=[5, 6], generator=g, **KW)
        with pytest.raises(ValueError, match=r"generator: a list of 1 generator\(s\) for 2 samples"):
            pipe([1, 2], generator=[g], **KW)
        with pytest.raises(TypeError, match=r"generator: expected a torch.Generator or a list of them"):
            pipe([1], generator=5, **KW)
