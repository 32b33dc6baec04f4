"""diffkit: exact-inversion samplers (BDIA), discrete diffusion sampling (RADD), one-step
distillation (DisBack) and score-field analysis, on Hugging Face diffusers.

The package root stays light (no torch import), so ``import diffkit`` is cheap; import
the submodules you need: ``diffkit.schedules``, ``diffkit.denoisers``,
``diffkit.samplers``, ``diffkit.distill``, ``diffkit.metrics``, ...
"""

__version__ = "0.1.0"
