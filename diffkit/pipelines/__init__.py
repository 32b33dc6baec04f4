"""diffusers-compatible pipelines owned by diffkit, and loading any of them from a folder.

``PIPELINES`` maps a ``model_index.json`` ``_class_name`` to its diffkit class (diffusers'
generic ``DiffusionPipeline.from_pretrained`` only resolves classes inside diffusers).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

PIPELINES = {
    "ClassConditionalPipeline": "diffkit.pipelines.class_conditional:ClassConditionalPipeline",
    "DiscreteDiffusionPipeline": "diffkit.pipelines.discrete:DiscreteDiffusionPipeline",
    "OneStepPipeline": "diffkit.pipelines.one_step:OneStepPipeline",
}


def pipeline_class(name: str):
    try:
        module, _, attr = PIPELINES[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown pipeline class {name!r}; diffkit pipelines: {', '.join(sorted(PIPELINES))}") from None
    return getattr(importlib.import_module(module), attr)


def load_pipeline(path, **kwargs):
    """Load a diffkit pipeline folder, or wrap a bare UNet2DModel folder with a DDIM scheduler."""
    from ..assets import asset_path

    p = asset_path(path)
    index = p / "model_index.json"
    if index.exists():
        name = json.loads(index.read_text())["_class_name"]
        return pipeline_class(name).from_pretrained(str(p), **kwargs)
    cfg = p / "config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel":
        from diffusers import DDIMScheduler, UNet2DModel

        from .class_conditional import ClassConditionalPipeline

        return ClassConditionalPipeline(UNet2DModel.from_pretrained(str(p)).eval(), DDIMScheduler())
    raise ValueError(f"{p} holds neither a model_index.json nor a UNet2DModel config.json")
