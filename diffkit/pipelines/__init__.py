"""diffusers-compatible pipelines owned by diffkit, and loading any of them from a folder.

    from diffkit.pipelines import ClassConditionalPipeline, load_pipeline

``PIPELINES`` maps a ``model_index.json`` ``_class_name`` to its diffkit class (diffusers'
generic ``DiffusionPipeline.from_pretrained`` only resolves classes inside diffusers).

:func:`load_pipeline` is the strict way in: the folder's ``SHA256SUMS`` manifest (if any) is
checked, and every model component must have exactly the keys and shapes of its weights file
(``diffkit.weights``); an error names the file, the keys and, for a shipped asset, the rebuild
command. A pipeline class's own ``from_pretrained`` is diffusers' loader with diffusers'
tolerance (a missing tensor stays randomly initialised, with a warning).

``DIFFUSERS_PIPELINES`` are the diffusers pipelines ``load_pipeline`` also opens from a
``save_pretrained`` folder (Stable Diffusion 1.x/2.x and SDXL, text-to-image, img2img and
inpainting; ε or v prediction). The pipeline classes are imported on first use, so importing
this package (``diffkit --help``) does not import torch or diffusers.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from diffkit.assets import REBUILD, AssetError, asset_path, corrupt_asset
from diffkit.weights import WeightsError, check_loaded_model, check_model_folder, load_model_strict

PIPELINES = {
    "ClassConditionalPipeline": "diffkit.pipelines.class_conditional:ClassConditionalPipeline",
    "DiscreteDiffusionPipeline": "diffkit.pipelines.discrete:DiscreteDiffusionPipeline",
    "OneStepPipeline": "diffkit.pipelines.one_step:OneStepPipeline",
}

#: diffusers pipeline classes whose saved folders ``load_pipeline`` opens (``local_files_only=True``)
DIFFUSERS_PIPELINES = (
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
)

__all__ = ["PIPELINES", "DIFFUSERS_PIPELINES", "pipeline_class", "load_pipeline", *PIPELINES]


def __getattr__(name):  # PEP 562: the pipeline classes on first use (keeps this import light)
    if name in PIPELINES:
        return pipeline_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pipeline_class(name: str):
    try:
        module, _, attr = PIPELINES[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown pipeline class {name!r}; diffkit pipelines: "
                         f"{', '.join(sorted(PIPELINES))}") from None
    return getattr(importlib.import_module(module), attr)


def load_pipeline(path, **kwargs):
    """Load a diffkit pipeline folder, a saved diffusers Stable Diffusion (XL) pipeline folder
    (``DIFFUSERS_PIPELINES``), or wrap a bare UNet2DModel folder with a DDIM scheduler. Local
    files only; ``path`` may be a shipped asset's name. diffkit's own folders load strictly (see
    the module docstring); diffusers folders keep diffusers' own tolerance."""
    p = asset_path(path)
    index = p / "model_index.json"
    other = _diffusers_class(index) if index.exists() else None
    if other is not None:  # a diffusers pipeline folder (save_pretrained)
        return _load_diffusers(p, other, **kwargs)
    if index.exists():
        variant, spec = kwargs.get("variant"), None
        try:
            spec = json.loads(index.read_text())
            pipe = pipeline_class(spec["_class_name"]).from_pretrained(str(p), **kwargs)
            for name, module in _model_components(pipe, spec):
                check_loaded_model(module, p / name, variant)
            return pipe
        except WeightsError as e:
            raise corrupt_asset(p, e) from None
        except (OSError, ValueError, KeyError) as e:
            if isinstance(spec, dict):  # diffusers' own refusal (a shape mismatch): name the file and the keys
                _name_the_weights(p, spec, variant)
            raise _unreadable(p, e) from e
    if not (p / "config.json").exists():
        _check_known_asset(p)
    cfg = p / "config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel":
        from diffusers import DDIMScheduler, UNet2DModel

        from .class_conditional import ClassConditionalPipeline

        try:
            unet = load_model_strict(UNet2DModel, p, lambda: UNet2DModel.from_pretrained(str(p)))
        except WeightsError as e:
            raise corrupt_asset(p, e) from None
        return ClassConditionalPipeline(unet.eval(), DDIMScheduler())
    raise ValueError(f"{p} holds neither a model_index.json nor a UNet2DModel config.json")


def _model_components(pipe, spec: dict):
    """(name, module) of the pipeline's model components that model_index.json lists."""
    for name, module in pipe.components.items():
        if isinstance(spec.get(name), list) and hasattr(module, "state_dict"):
            yield name, module


def _check_components(p: Path, spec: dict, variant=None) -> None:
    """Strict key/shape check of every model component (a diffusers ``ModelMixin``) listed in
    model_index.json against its subfolder's config.json, without loading it."""
    from diffusers import ModelMixin

    for name, entry in spec.items():
        if name.startswith("_") or not (isinstance(entry, list) and len(entry) == 2 and all(entry)):
            continue
        library, class_name = entry
        module = importlib.import_module("diffusers" if library == "diffusers" else library)
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, ModelMixin) and (p / name / "config.json").is_file():
            check_model_folder(cls, p / name, variant)


def _name_the_weights(p: Path, spec: dict, variant=None) -> None:
    """Raise the CorruptAssetError naming the file and the keys if the weights are at fault."""
    try:
        _check_components(p, spec, variant)
    except WeightsError as w:
        raise corrupt_asset(p, w) from None
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError):
        pass  # the check itself cannot run (e.g. an unreadable config): the caller reports the load error


def _diffusers_class(index: Path):
    """The ``_class_name`` of a model_index.json that is not one of diffkit's pipelines (None for
    diffkit's own, and for an unreadable file, which the diffkit branch reports)."""
    try:
        name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if name in PIPELINES else name


def _load_diffusers(p: Path, name: str, **kwargs):
    if name not in DIFFUSERS_PIPELINES:
        raise ValueError(f"{p}: pipeline class {name!r} is not supported; load_pipeline opens diffkit's "
                         f"{', '.join(sorted(PIPELINES))} and diffusers' {', '.join(DIFFUSERS_PIPELINES)}")
    if kwargs.get("local_files_only", True) is not True:
        raise ValueError(f"local_files_only: load_pipeline loads local folders only, got "
                         f"{kwargs['local_files_only']!r}")
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(p), **{**kwargs, "local_files_only": True})
    except (OSError, ValueError, KeyError) as e:
        raise _unreadable(p, e) from e
    if type(pipe).__name__ != name:
        raise ValueError(f"{p}: model_index.json names {name} but diffusers loaded {type(pipe).__name__}")
    return pipe


def _unreadable(p, err):
    """An AssetError naming the folder and, for a shipped asset, the command that rebuilds it."""
    what, cmd = REBUILD.get(p.name, ("the pipeline", None))
    hint = f"; rebuild it with `{cmd}`" if cmd else ""
    return AssetError(f"{what} at {p} is incomplete or corrupted ({type(err).__name__}: {err}){hint}")


def _check_known_asset(p):
    if p.name in REBUILD:
        raise _unreadable(p, FileNotFoundError("no model_index.json"))
