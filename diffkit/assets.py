"""Locate and load the models shipped in ``assets/``; errors name the rebuild command.

Search order for an asset name (e.g. ``digits-unet``): ``$DIFFKIT_ASSETS/<name>``, the
``assets/`` folder beside the package sources (editable installs, checkouts), then
``./assets/<name>``. A path that exists is used as given. A path that does not exist and
names a shipped asset inside an ``assets`` folder (``assets/digits-unet``, as the README
writes it, from any working directory) is that asset; any other missing path is an error that
names the asset to pass instead. Nothing here touches the network.

A resolved folder that holds a ``SHA256SUMS`` manifest (every shipped asset, and every folder
an exporter writes: ``diffkit.weights``) is checked against it, each file hashed once per
process; a mismatch raises :class:`CorruptAssetError` naming the file and the rebuild command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from diffkit.weights import WeightsError, check_manifest

__all__ = ["REBUILD", "assets_root", "asset_path", "rebuild_hint", "verify_asset", "corrupt_asset", "AssetError",
           "CorruptAssetError", "shipped_asset_target"]


def _onestep_rebuild(mode: str, output: str, stage1: str) -> str:
    """The three commands that train a one-step digits generator (about 40 CPU-min on one thread): 4,000
    generator steps at lr_G 3e-5 / EMA 0.99, resumed to 5,500 at 1e-5 / 0.999, then to 9,500 at 5e-6."""
    first = (f"diffkit distill --teacher assets/digits-unet --mode {mode} --generator-timestep 399 --lr-generator 3e-5 "
             f"--lr-fake 1e-4 --warmup-steps 50 --ema-decay 0.99 {stage1} --batch-size 32 --fake-updates 1 --seed 0 "
             f"--max-steps 4000 --cpu --output {output} --replace-asset")
    return (f"{first}, then the same with --lr-generator 1e-5 --ema-decay 0.999 --max-steps 5500 --resume, then with "
            f"--lr-generator 5e-6 --ema-decay 0.999 --max-steps 9500 --resume")


_STAGE1 = {"warm-critic": "--stage1-steps 400 --stage1-lr 1e-4 --path-spacing even --path-nodes 5 --steps-per-node 100",
           "disback": "--stage1-steps 400 --stage1-lr 1e-5 --path-spacing log-progress --progress-candidates 8 "
                      "--path-nodes 5 --steps-per-node 50"}  # the Stage-1 path of each generator


#: name -> (what it is, the command that rebuilds it). Writing into the shipped assets folder
#: needs ``--replace-asset`` (the training commands refuse it otherwise).
REBUILD = {
    "digits-unet": ("the class-conditional digits teacher",
                    "diffkit train-teacher --output assets/digits-unet --replace-asset"),
    "digits-features": ("the digits feature network",
                        "diffkit train-features --output assets/digits-features --replace-asset"),
    "text-radd": ("the character-level RADD text model",
                  "diffkit text train --output assets/text-radd --replace-asset"),
    "digits-onestep": ("the shipped one-step digits generator (trained by DisBack; the better of the two on held-out "
                       "seeds, benchmarks/results/onestep_heldout.json)",
                       _onestep_rebuild("disback", "assets/digits-onestep", _STAGE1["disback"])),
    "digits-onestep-warm-critic": ("the one-step digits generator trained in warm-critic mode (shipped beside it)",
                                   _onestep_rebuild("warm-critic", "assets/digits-onestep-warm-critic",
                                                    _STAGE1["warm-critic"])),
}


class AssetError(FileNotFoundError):
    pass


class CorruptAssetError(AssetError, WeightsError):
    """A model folder whose files fail their sha256 manifest or the strict key/shape check
    (an :class:`AssetError` for the callers that skip a missing asset, and a ValueError)."""


def _describe(p: Path, name: str | None = None) -> tuple[str, str]:
    what, cmd = REBUILD.get(name or p.name, ("this model", None))
    return what, (f"; rebuild it with `{cmd}`" if cmd else "")


def corrupt_asset(folder, err: Exception, name: str | None = None) -> CorruptAssetError:
    """The error for a corrupted model folder: what it is, where, the cause, the rebuild command
    (of the asset ``name``; default: the one the folder is named after, if any)."""
    p = Path(folder)
    what, hint = _describe(p, name)
    return CorruptAssetError(f"{what} at {p} is corrupted: {err}{hint}")


def verify_asset(folder) -> Path:
    """Check ``folder`` against its ``SHA256SUMS`` manifest, if it has one."""
    try:
        check_manifest(folder)
    except WeightsError as e:
        raise corrupt_asset(folder, e) from None
    return Path(folder)


def assets_root() -> Path:
    env = os.environ.get("DIFFKIT_ASSETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "assets"
    if here.is_dir():
        return here
    return Path.cwd() / "assets"


def shipped_asset_target(output) -> Optional[Path]:
    """The place in the shipped assets folder (:func:`assets_root`) that writing ``output`` would
    replace, or None: a path that resolves into that folder, or a bare asset name such as
    ``digits-unet`` that is not a folder here (the loaders read such a name from the assets)."""
    p = Path(output)
    root = assets_root().resolve()
    if str(output) in REBUILD and not os.path.lexists(p):
        return root / str(output)
    rp = p.resolve()
    return rp if rp == root or root in rp.parents else None


def asset_path(name_or_path: str | os.PathLike, required: tuple[str, ...] = ()) -> Path:
    """Resolve an asset name or a directory, checking that ``required`` files exist in it.

    An existing path is used as given. A missing one that is a shipped asset's name, or
    ``.../assets/<name>`` (e.g. ``assets/digits-unet`` run outside the repository), resolves to
    the shipped asset; for any other missing path whose last part is an asset's name the error
    says to pass the asset name."""
    p = Path(name_or_path)
    name = p.name
    use_name = ""
    if not p.exists() and name in REBUILD:
        if str(name_or_path) == name or p.parent.name == "assets":
            p = assets_root() / name
        else:
            use_name = f"; for the shipped one pass the asset name `{name}`"
    what, hint = _describe(p, name)
    if not p.is_dir():
        raise AssetError(f"{what} not found at {p}{use_name}{hint}")
    missing = [r for r in required if not (p / r).exists()]
    if missing:
        raise AssetError(f"{what} at {p} is incomplete or corrupted (missing {', '.join(missing)}){hint}")
    return verify_asset(p)


def rebuild_hint(path: str | os.PathLike) -> str:
    """``"; rebuild <what> with `<command>`"`` when ``path`` or its parent (a pipeline folder's
    ``transformer/``) is a shipped asset's folder, else ``""`` (for error messages)."""
    p = Path(path)
    for d in (p, p.parent):
        if d.name in REBUILD:
            what, cmd = REBUILD[d.name]
            return f"; rebuild {what} with `{cmd}`"
    return ""
