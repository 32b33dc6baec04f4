"""Locate and load the models shipped in ``assets/``; errors name the rebuild command.

Search order for an asset name (e.g. ``digits-unet``): ``$DIFFKIT_ASSETS/<name>``, the
``assets/`` folder beside the package sources (editable installs, checkouts), then
``./assets/<name>``. A path that exists is used as given.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REBUILD", "assets_root", "asset_path", "rebuild_hint", "AssetError"]

#: name -> (what it is, the command that rebuilds it)
REBUILD = {
    "digits-unet": ("the class-conditional digits teacher", "diffkit train-teacher --output assets/digits-unet"),
    "digits-features": ("the digits feature network", "diffkit train-features --output assets/digits-features"),
    "text-radd": ("the character-level RADD text model", "diffkit text train --output assets/text-radd"),
    "digits-onestep": ("the one-step digits generator",
                       "diffkit distill --teacher assets/digits-unet --mode warm-critic --generator-timestep 399 "
                       "--lr-generator 3e-5 --warmup-steps 50 --ema-decay 0.99 --stage1-steps 400 --path-nodes 5 "
                       "--steps-per-node 100 --max-steps 4000 --cpu --output assets/digits-onestep, then the same "
                       "with --lr-generator 1e-5 --ema-decay 0.999 --max-steps 5500 --resume, then with "
                       "--lr-generator 5e-6 --ema-decay 0.999 --max-steps 9500 --resume"),
}


class AssetError(FileNotFoundError):
    pass


def assets_root() -> Path:
    env = os.environ.get("DIFFKIT_ASSETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "assets"
    if here.is_dir():
        return here
    return Path.cwd() / "assets"


def asset_path(name_or_path: str | os.PathLike, required: tuple[str, ...] = ()) -> Path:
    """Resolve an asset name or a directory, checking that ``required`` files exist in it."""
    p = Path(name_or_path)
    if not p.exists() and str(name_or_path) in REBUILD:
        p = assets_root() / str(name_or_path)
    name = p.name
    what, cmd = REBUILD.get(name, ("this model", None))
    hint = f"; rebuild it with `{cmd}`" if cmd else ""
    if not p.is_dir():
        raise AssetError(f"{what} not found at {p}{hint}")
    missing = [r for r in required if not (p / r).exists()]
    if missing:
        raise AssetError(f"{what} at {p} is incomplete or corrupted (missing {', '.join(missing)}){hint}")
    return p


def rebuild_hint(path: str | os.PathLike) -> str:
    """``"; rebuild <what> with `<command>`"`` when ``path`` or its parent (a pipeline folder's
    ``transformer/``) is a shipped asset's folder, else ``""`` (for error messages)."""
    p = Path(path)
    for d in (p, p.parent):
        if d.name in REBUILD:
            what, cmd = REBUILD[d.name]
            return f"; rebuild {what} with `{cmd}`"
    return ""
