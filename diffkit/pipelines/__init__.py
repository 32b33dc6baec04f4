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
        try:
            name = json.loads(index.read_text())["_class_name"]
            return pipeline_class(name).from_pretrained(str(p), **kwargs)
        except (OSError, ValueError, KeyError) as e:
            raise _unreadable(p, e) from e
    if not (p / "config.json").exists():
        _check_known_asset(p)
    cfg = p / "config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel":
        from diffusers import DDIMScheduler, UNet2DModel

        from .class_conditional import ClassConditionalPipeline

        return ClassConditionalPipeline(UNet2DModel.from_pretrained(str(p)).eval(), DDIMScheduler())
    raise ValueError(f"{p} holds neither a model_index.json nor a UNet2DModel config.json")


def _unreadable(p, err):
    """An AssetError naming the folder and, for a shipped asset, the command that rebuilds it."""
    from ..assets import REBUILD, AssetError

    what, cmd = REBUILD.get(p.name, ("the pipeline", None))
    hint = f"; rebuild it with `{cmd}`" if cmd else ""
    return AssetError(f"{what} at {p} is incomplete or corrupted ({type(err).__name__}: {err}){hint}")


def _check_known_asset(p):
    from ..assets import REBUILD

    if p.name in REBUILD:
        raise _unreadable(p, FileNotFoundError("no model_index.json"))
