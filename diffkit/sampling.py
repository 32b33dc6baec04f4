"""The one sampling driver: a pipeline + a registered sampler (or its own) -> images.

Every entrance draws images through :func:`generate` (or a :class:`SamplingPlan` it builds once
and runs per batch): ``diffkit sample`` (and its ``sample-edm`` alias), ``diffkit fid --model`` /
:class:`diffkit.metrics.ModelSamples`, ``diffkit demo``, :func:`diffkit.metrics.digits.sample_digits`
and the benchmarks. Its rules (docs/methods/sampling.md):

* **Sampler.** ``sampler=None``: the pipeline's own scheduler, called as it is. A registry name
  (:mod:`diffkit.registry`) dispatches on the entry's kind: ``"scheduler"`` drives a copy of the
  pipeline with that scheduler (``pipeline_with_sampler``: same modules and config; the pipeline
  passed in keeps its own), ``"function"`` runs the k-diffusion-style sampler on the model's EDM
  denoiser over the Karras grid of its trained σ range. A one-step generator (``pipe.one_step``)
  only has its own sampler; naming one is an error naming ``--sampler``.
* **Noise.** Sample k (a global index, ``sample_indices``, default 0..n-1) starts from N(0, I)
  drawn from (seed, k) alone (:func:`diffkit.seeding.randn_for_indices`), scaled to the prior of
  the sampler's coordinates: the pipeline's ``init_noise_sigma`` for schedulers; for function
  samplers on a VP model in EDM coordinates x̃ = x/√ᾱ, the prior x_T ~ N(0, I) gives
  x̃ ~ N(0, (σ₀² + 1) I), so the noise is scaled by √(σ₀² + 1) (Karras et al. 2022, arXiv:2206.00364,
  Appendix C.1; the VP model's own prior, not σ₀ alone).
* **Labels.** A class-conditional model without ``condition`` gets ``k % num_classes`` for sample
  k (:func:`labels_for_indices`; :func:`balanced_labels` for 0..n-1).
* **Budget.** ``steps`` or ``nfe`` (not both); the entry's declared rule converts
  (``SamplerEntry.nfe`` / ``steps_for``: N, or 2N - 1 for Heun). Default: 50 steps; 1 for a
  one-step generator.
* **Options.** Validated against the entry's declared options (``SamplerEntry.check_options``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from diffkit.checks import check_count
from diffkit.conditioning import Guidance, class_guidance
from diffkit.data import NUM_CLASSES
from diffkit.denoisers import Denoiser, EpsModel
from diffkit.pipelines.editing import decode_latent, make_condition
from diffkit.pipelines.one_step import require_diffusion_model
from diffkit.pipelines.prompted import condition_kind, require_latent_unet, sample_prompt
from diffkit.registry import SamplerEntry, entry_for_scheduler, get_sampler, image_samplers, pipeline_with_sampler
from diffkit.samplers.edm import model_sigmas
from diffkit.seeding import randn_for_indices

__all__ = ["DEFAULT_STEPS", "Generated", "SamplingPlan", "plan_sampling", "generate", "balanced_labels",
           "labels_for_indices", "parse_options", "prior_scale"]

#: steps when neither steps nor nfe is given (a one-step generator: 1)
DEFAULT_STEPS = 50


# ---------------------------------------------------------------------------- rules
def labels_for_indices(indices: Sequence[int], num_classes: int) -> list[int]:
    """The label rule: sample k gets class ``k % num_classes`` (class-balanced over 0..C·m-1)."""
    return [int(k) % num_classes for k in indices]


def balanced_labels(n: int, num_classes: int = NUM_CLASSES, *, exact: bool = True) -> torch.Tensor:
    """0, 1, ..., C-1, 0, 1, ... for samples 0..n-1. ``exact``: n must be a multiple of C
    (equal count per class, as the FID-digits protocol wants)."""
    n = check_count(n, "n")
    if exact and n % num_classes:
        raise ValueError(f"n must be a positive multiple of {num_classes} for a class-balanced set, got {n}")
    return torch.tensor(labels_for_indices(range(n), num_classes), dtype=torch.long)


def prior_scale(sigma_max: float) -> float:
    """Std of the prior in EDM coordinates of a VP model at σ_max: √(σ_max² + 1)."""
    return math.sqrt(float(sigma_max) ** 2 + 1)


def parse_options(pairs: Optional[Sequence[str]], gamma: Optional[float] = None, flag: str = "--option") -> dict:
    """``["name=value", ...]`` (+ ``--gamma``) as a dict of strings / values, before validation."""
    out: dict = {}
    for p in pairs or ():
        name, sep, value = p.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{flag}: expected name=value, got {p!r}")
        out[name.strip()] = value.strip()
    if gamma is not None:
        if "gamma" in out:
            raise ValueError("--gamma and --option gamma=...: give gamma once")
        out["gamma"] = gamma
    return out


# ---------------------------------------------------------------------------- plan
@dataclass
class Generated:
    images: torch.Tensor  # (n, C, H, W) float32 in [-1, 1]
    nfe: int
    steps: int
    sampler: str  # the registry name, or "own <SchedulerClass>"


@dataclass
class SamplingPlan:
    """A pipeline prepared for one sampler, budget and options; :meth:`run` draws any samples."""

    pipe: object
    entry: Optional[SamplerEntry]  # None: the pipeline's own scheduler
    steps: int
    options: dict = field(default_factory=dict)
    named: bool = False  # sampler named by the caller (else the pipeline's own, possibly with options)

    @property
    def one_step(self) -> bool:
        return bool(getattr(self.pipe, "one_step", False))

    @property
    def sampler_name(self) -> str:
        return self.entry.name if self.named else f"own {type(self.pipe.scheduler).__name__}"

    @property
    def nfe(self) -> int:
        if self.one_step:
            return 1
        return self.entry.nfe(self.steps, self.options) if self.entry is not None else self.steps

    def run(self, condition=None, n: Optional[int] = None, *, seed: int = 0, sample_indices=None,
            guidance_scale: Optional[float] = None, eta: float = 0.0, dtype=None) -> Generated:
        """``n`` samples (or one per label / prompt in ``condition``) of global indices
        ``sample_indices`` (default 0..n-1), noise from ``seed``."""
        pipe = self.pipe
        kind = condition_kind(pipe)
        idx, condition = _indices_and_condition(pipe, kind, condition, n, sample_indices)
        if guidance_scale is None:
            guidance_scale = _default_guidance(pipe)
        split = self.entry.split_options(self.options) if self.entry is not None else {"call": {}, "grid": {}}
        if self.entry is None or self.entry.kind == "scheduler":
            call = dict(split["call"])
            eta = call.pop("eta", eta)
            if kind == "prompt":
                images, nfe = sample_prompt(pipe, condition, len(idx), self.steps, guidance_scale, eta, seed, idx)
                return Generated(images, nfe, self.steps, self.sampler_name)
            out = pipe(class_labels=condition, batch_size=None if condition is not None else len(idx),
                       num_inference_steps=self.steps, guidance_scale=guidance_scale, eta=eta, seed=seed,
                       sample_indices=idx, output_type="pt", progress=False, **call)
            return Generated(out.images, int(out.nfe), self.steps, self.sampler_name)
        return self._run_function(kind, condition, idx, seed, guidance_scale, dtype, split)

    @torch.no_grad()
    def _run_function(self, kind, condition, idx, seed, guidance_scale, dtype, split) -> Generated:
        pipe, unet = self.pipe, self.pipe.unet
        D = Denoiser(EpsModel(unet, pipe.scheduler.config))
        sigmas = model_sigmas(D, self.steps, **split["grid"])
        if kind == "prompt":
            guide = make_condition(pipe, condition, len(idx), guidance_scale, "prompt")
        elif condition is not None:
            guide = class_guidance(unet, condition, guidance_scale, device=unet.device)
        else:
            guide = Guidance()
        cfg = unet.config
        x = randn_for_indices((cfg.in_channels, cfg.sample_size, cfg.sample_size), idx, seed,
                              device=unet.device) * prior_scale(sigmas[0])
        fn = self.entry.load()
        kw = {**split["call"], "dtype": dtype, "return_nfe": True, "disable": True}
        if float(kw.get("s_churn", 0.0)) > 0:  # EDM churn draws its step noise from one generator
            kw["generator"] = torch.Generator().manual_seed(seed)
        out, used = fn(D, x.to(unet.dtype), sigmas, {"guidance": guide}, **kw)
        return Generated(decode_latent(pipe, out), int(used), self.steps, self.entry.name)


def _default_guidance(pipe) -> float:
    """The pipeline call's own default guidance scale (1 for diffkit's pipelines, SD's 7.5, ...)."""
    p = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(p.default) if p is not None and isinstance(p.default, (int, float)) else 1.0


def _indices_and_condition(pipe, kind, condition, n, sample_indices):
    if kind == "prompt":
        if condition is None:
            raise ValueError("condition: a prompt is required for a prompt-conditioned pipeline")
        prompts = [condition] if isinstance(condition, str) else list(condition)
        if n is None:
            n = len(prompts) if sample_indices is None else len(list(sample_indices))
        condition = prompts if len(prompts) > 1 else prompts[0]
    elif condition is not None:
        if kind != "class":
            raise ValueError(f"condition: {type(pipe).__name__} is unconditional and takes no class labels")
        condition = torch.as_tensor(condition, dtype=torch.long).reshape(-1)
        if not len(condition):
            raise ValueError("labels: at least one label is needed, got 0")
        if n is not None and n != len(condition):
            raise ValueError(f"n={n} but {len(condition)} labels were given")
        n = len(condition)
    idx = list(range(check_count(n, "n"))) if sample_indices is None else [int(k) for k in sample_indices]
    if sample_indices is not None and n is not None and len(idx) != n:
        raise ValueError(f"sample_indices has {len(idx)} entries for n={n}")
    if kind == "class" and condition is None:
        condition = torch.tensor(labels_for_indices(idx, getattr(pipe, "num_classes")), dtype=torch.long)
    return idx, condition


def plan_sampling(pipe, sampler: Optional[str] = None, *, steps: Optional[int] = None, nfe: Optional[int] = None,
                  options: Optional[dict] = None, sampler_flag: str = "--sampler") -> SamplingPlan:
    """Prepare ``pipe`` for ``sampler`` (None: its own) at a budget of ``steps`` or ``nfe``."""
    if steps is not None and nfe is not None:
        raise ValueError("steps and nfe: give one budget, not both")
    if steps is not None:
        check_count(steps, "steps")
    if nfe is not None:
        check_count(nfe, "nfe")
    options = dict(options or {})
    if getattr(pipe, "one_step", False):
        if sampler is not None:
            require_diffusion_model(pipe, f"{sampler_flag} {sampler}")
        if options:
            raise ValueError(f"options {', '.join(options)}: a one-step generator takes no sampler options")
        return SamplingPlan(pipe, None, 1)
    if sampler is None:
        entry = entry_for_scheduler(pipe.scheduler) if options else None
        if options and entry is None:
            raise ValueError(f"options {', '.join(options)}: the model's own {type(pipe.scheduler).__name__} is not "
                             f"a registered sampler with options; name one with {sampler_flag}")
        if entry is not None:
            options = entry.check_options(options)
            config = entry.split_options(options)["config"]
            if config:
                pipe = pipeline_with_sampler(pipe, entry.name, **config)
        return SamplingPlan(pipe, entry, _steps(entry, steps, nfe, options), options)
    entry = get_sampler(sampler)
    if entry.modality != "image":
        raise ValueError(f"{sampler_flag} {sampler} is not an image sampler ({entry.description}); image samplers: "
                         f"{', '.join(image_samplers())}")
    require_diffusion_model(pipe, f"{sampler_flag} {sampler}")
    options = entry.check_options(options)
    if entry.kind == "scheduler":
        pipe = pipeline_with_sampler(pipe, sampler, **entry.split_options(options)["config"])
    else:
        require_latent_unet(pipe, f"{sampler_flag} {sampler}")
        fn = entry.load()
        params = list(inspect.signature(fn).parameters) if callable(fn) and not inspect.isclass(fn) else []
        if params[:3] != ["model", "x", "sigmas"]:
            raise ValueError(f"sampler {sampler!r} is not an image sampler fn(model, x, sigmas) "
                             f"({entry.description}); pick a scheduler or an EDM-style function sampler")
    if "sample_indices" not in inspect.signature(pipe.__call__).parameters and condition_kind(pipe) != "prompt":
        raise ValueError(f"model: {type(pipe).__name__} has no sample_indices argument, so its noise cannot be "
                         "keyed to the global sample index; use a diffkit pipeline")
    return SamplingPlan(pipe, entry, _steps(entry, steps, nfe, options), options, named=True)


def _steps(entry: Optional[SamplerEntry], steps, nfe, options) -> int:
    if steps is not None:
        return steps
    if nfe is not None:
        return entry.steps_for(nfe, options) if entry is not None else nfe
    return DEFAULT_STEPS


def generate(pipe, sampler: Optional[str] = None, *, steps: Optional[int] = None, nfe: Optional[int] = None,
             condition=None, n: Optional[int] = None, seed: int = 0, sample_indices=None,
             guidance_scale: Optional[float] = None, eta: float = 0.0, options: Optional[dict] = None, dtype=None,
             sampler_flag: str = "--sampler") -> Generated:
    """Images from ``pipe`` with ``sampler`` (None: its own), under the module's rules.

    ``condition``: class labels (a sequence / tensor) or a prompt (a string, or one per sample);
    None = balanced labels for a class-conditional model. ``n``: how many (default: one per
    label / the length of ``sample_indices``). ``guidance_scale`` None: the pipeline call's default.
    ``dtype``: a function sampler's state dtype (e.g. torch.float64; default the UNet's).
    """
    plan = plan_sampling(pipe, sampler, steps=steps, nfe=nfe, options=options, sampler_flag=sampler_flag)
    return plan.run(condition, n, seed=seed, sample_indices=sample_indices, guidance_scale=guidance_scale, eta=eta,
                    dtype=dtype)
