"""diffkit.distill: score distillation into one-step generators.

- ``losses``: the score networks' DDPM loss and the generator's distribution-matching
  gradient (DMD2 normaliser / Diff-Instruct weighting).
- ``generator``: the one-step generator G(z[, c]) and its export as a diffusers folder.
- ``disback``: ``DisBackTrainer`` (Stage 1 path recording, Stage 2 backtracking; modes
  disback / vanilla / warm-critic).
"""

_EXPORTS = {
    "DisBackConfig": "disback", "DisBackTrainer": "disback", "load_path_manifest": "disback",
    "OneStepGenerator": "generator", "export_generator": "generator",
    "DistributionMatchingLoss": "losses", "dm_gradient": "losses", "score_loss": "losses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):  # lazy: importing diffkit.distill.generator need not load the trainer
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
