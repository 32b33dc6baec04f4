"""diffkit.distill: score distillation into one-step generators."""
