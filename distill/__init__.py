"""diffkit.distill: score distillation into one-step generators.

Method math (no training):

- ``config``: ``DisBackConfig``, the modes and the target-node rule (torch-free).
- ``losses``: the score networks' DDPM loss and the generator's distribution-matching
  gradient (DMD2 normaliser / Diff-Instruct weighting).
- ``generator``: the one-step generator G(z[, c]), its fresh samples, the teacher check.
- ``path``: Stage 1's records (snapshot steps, node selection, the ``path.json`` manifest).

Trainers (on :class:`diffkit.run_loop.RunLoop`, like :class:`diffkit.train.Trainer`):

- ``stage1``: Stage 1, degradation recording.
- ``disback``: ``DisBackTrainer`` (Stage 2 backtracking; modes disback / vanilla / warm-critic).

The export of a generator as a diffusers folder is ``diffkit.pipelines.one_step.export_generator``.
Method notes: docs/methods/disback.md.
"""

_EXPORTS = {
    "DisBackConfig": "config", "DisBackTrainer": "disback", "load_path_manifest": "path",
    "OneStepGenerator": "generator",
    "DistributionMatchingLoss": "losses", "dm_gradient": "losses", "score_loss": "losses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):  # lazy: importing diffkit.distill.config must not load torch or the trainer
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
