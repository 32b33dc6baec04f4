"""Model weights on disk: strict key/shape checks, the one sha256 helper, and the manifests.

* **Strict loading** of diffkit's own model classes and folders: a missing or unexpected
  tensor, or one of the wrong shape, raises :class:`WeightsError` naming the file and every
  key at fault (diffusers' own loader would leave a missing tensor randomly initialised or on
  the meta device). :func:`load_model_strict` wraps diffusers' ``from_pretrained`` of a
  model folder: the loaded model's keys and shapes are compared with the weights file's
  header (no tensor read twice), and when diffusers itself refuses the file (a shape
  mismatch), :func:`check_model_folder` (the model built on the meta device from its
  config.json) names the file and the keys. :func:`load_state_dict_strict` loads a
  safetensors file into a plain module. Third-party diffusers folders loaded through
  diffusers keep diffusers' tolerance.
* **One sha256 helper**, :func:`file_sha256`: each file is hashed once per process (cached by
  path, size, mtime and inode; a file modified in the last 2 s is re-hashed every time, as
  git does for racily clean entries).
* **Manifests**: an exported model folder (every shipped asset) holds ``SHA256SUMS`` in
  ``sha256sum`` format (``cd assets/digits-unet && sha256sum -c SHA256SUMS`` checks it
  too), listing the files a loader reads: weights (``*.safetensors``, ``*.npz``, ``*.bin``,
  ``*.pt``, ``*.pth``, ``*.ckpt``), configs (``model_index.json``, ``*config.json``) and
  everything under ``tokenizer/``. Model cards, sample images, provenance records
  (``training.json`` ...) and the text corpus snapshot (sha256-checked by
  ``diffkit.text_corpus``) are not listed: they may be rewritten without a re-export. The
  exporters write it (:func:`write_manifest`); ``diffkit.assets.asset_path`` checks it
  (:func:`check_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional

from diffkit.atomic import write_text_atomically

if TYPE_CHECKING:  # annotations only
    import torch

# torch and safetensors are imported inside the functions that use them, so that `diffkit --help`
# and `import diffkit.pipelines` (which check manifests through this module) stay light.

__all__ = ["WeightsError", "MANIFEST", "file_sha256", "manifest_files", "manifest_text", "write_manifest",
           "check_manifest", "state_shapes", "file_shapes", "state_dict_mismatch", "check_keys",
           "load_state_dict_strict", "find_weights_file", "check_model_folder", "check_loaded_model",
           "load_model_strict"]

MANIFEST = "SHA256SUMS"
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".bin", ".pt", ".pth", ".ckpt")
# diffusers' weight file names, in the order its loader prefers them
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.safetensors.index.json",
                     "diffusion_pytorch_model{v}.bin")
_RACY_SECONDS = 2.0  # a file modified this recently may change again within one mtime tick


class WeightsError(ValueError):
    """Weights on disk that do not match the model (keys, shapes) or their recorded sha256."""


# ---------------------------------------------------------------------------- sha256
def _hash_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(module) -> str:
    """SHA-256 over a module's state_dict (sorted keys, names, dtypes, shapes and bytes): the one
    fingerprint of in-memory weights (DisBack path nodes, feature networks of cached FID stats)."""
    import torch  # weights.py stays importable without torch

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


_hashes: dict[str, tuple[tuple, str]] = {}


def _stat_key(st: os.stat_result) -> tuple:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def file_sha256(path) -> str:
    """The sha256 hex digest of a file, computed once per process per unchanged file."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = _stat_key(st)
    hit = _hashes.get(real)
    if hit is not None and hit[0] == key:
        return hit[1]
    digest = _hash_file(real)
    if _stat_key(os.stat(real)) == key and time.time() - st.st_mtime > _RACY_SECONDS:
        _hashes[real] = (key, digest)
    return digest


# ---------------------------------------------------------------------------- manifests
def _listed(rel: PurePosixPath) -> bool:
    return (rel.suffix in WEIGHT_SUFFIXES or rel.name == "model_index.json" or rel.name.endswith("config.json")
            or rel.parts[0] == "tokenizer")


def manifest_files(folder) -> list[str]:
    """The files of ``folder`` that its manifest lists (relative POSIX paths, sorted)."""
    folder = Path(folder)
    out = []
    for f in folder.rglob("*"):
        rel = PurePosixPath(f.relative_to(folder).as_posix())
        if f.is_file() and not any(p.startswith(".") for p in rel.parts) and rel.name != MANIFEST and _listed(rel):
            out.append(str(rel))
    return sorted(out)


def manifest_text(folder) -> str:
    folder = Path(folder)
    return "".join(f"{file_sha256(folder / rel)}  {rel}\n" for rel in manifest_files(folder))


def write_manifest(folder) -> Path:
    """Write (or refresh) ``folder/SHA256SUMS``; every exporter calls it before publishing."""
    path = Path(folder) / MANIFEST
    write_text_atomically(path, manifest_text(folder))
    return path


def check_manifest(folder) -> bool:
    """Check every file listed in ``folder/SHA256SUMS`` (False: the folder has no manifest).
    Raises :class:`WeightsError` naming the first file that is missing or differs."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise WeightsError(f"{path} line {n} is not '<sha256>  <file>': {line[:80]!r}")
        f = folder / rel
        if not f.is_file():
            raise WeightsError(f"{f} is listed in {path} but missing")
        got = file_sha256(f)
        if got != digest:
            raise WeightsError(f"sha256 mismatch: {f} has sha256 {got}, {path} records {digest}")
    return True


# ---------------------------------------------------------------------------- keys and shapes
def state_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def file_shapes(path) -> dict[str, tuple]:
    """Tensor name -> shape of a weights file, read without loading the tensors (safetensors
    header; a sharded ``*.safetensors.index.json``; a torch pickle memory-mapped)."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        out: dict[str, tuple] = {}
        for s in shards:
            out.update(file_shapes(path.parent / s))
        return out
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import torch

    return state_shapes(torch.load(path, map_location="cpu", weights_only=True, mmap=True))


def state_dict_mismatch(expected: Mapping[str, tuple], found: Mapping[str, tuple], tolerated: Iterable[str] = ()):
    """(missing, unexpected, shape mismatches) of ``found`` against ``expected`` (key -> shape),
    each sorted; a shape mismatch is (key, found shape, expected shape)."""
    keys = set(found) - set(tolerated)
    missing = sorted(set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    shapes = sorted((k, tuple(found[k]), tuple(expected[k])) for k in keys & set(expected)
                    if tuple(found[k]) != tuple(expected[k]))
    return missing, unexpected, shapes


def check_keys(expected: Mapping[str, tuple], found: Mapping[str, tuple], source, tolerated: Iterable[str] = (),
               what: str = "the model") -> None:
    """Raise one :class:`WeightsError` naming ``source`` (the file) and every key at fault."""
    missing, unexpected, shapes = state_dict_mismatch(expected, found, tolerated)
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} does not match {what}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): "
                     + "; ".join(f"{k}: file {f} vs model {m}" for k, f, m in shapes))
    raise WeightsError("\n".join(lines))


def load_state_dict_strict(module: torch.nn.Module, path, device="cpu") -> None:
    """Load a safetensors file into ``module``: every key present, none extra, every shape equal."""
    from safetensors.torch import load_file

    state = load_file(str(path), device=str(device))
    check_keys(state_shapes(module.state_dict()), state_shapes(state), path, what=type(module).__name__)
    module.load_state_dict(state, strict=True)


def find_weights_file(folder, variant: Optional[str] = None) -> Optional[Path]:
    """The weights file diffusers' ``from_pretrained`` reads in a model folder (None: none there)."""
    v = f".{variant}" if variant else ""
    for name in DIFFUSERS_WEIGHTS:
        f = Path(folder) / name.format(v=v)
        if f.is_file():
            return f
    return None


def check_model_folder(cls, folder, variant: Optional[str] = None) -> None:
    """Check a diffusers-format model folder (config.json + weights) of the ``ModelMixin``
    class ``cls`` without loading it: the model built from the config on the meta device (no
    memory, no initialisation; ~20-40 ms for the digits UNet, so used when diffusers' own
    load fails) must have exactly the file's keys and shapes. A folder without a weights file
    is left to diffusers' own error."""
    f = find_weights_file(folder, variant)
    if f is None:
        return
    import torch

    config = cls.load_config(str(folder))
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except (RuntimeError, NotImplementedError):  # an __init__ that computes on its tensors: build it for real
        model = cls.from_config(config)
    check_keys(state_shapes(model.state_dict()), file_shapes(f), f, what=f"{cls.__name__} built from its config.json")


def check_loaded_model(model: torch.nn.Module, folder, variant: Optional[str] = None) -> None:
    """The model diffusers loaded from ``folder`` must have exactly its weights file's keys and
    shapes (diffusers leaves a tensor missing from the file randomly initialised or on the meta
    device, and ignores an extra one). Reads the file's header only."""
    f = find_weights_file(folder, variant)
    if f is not None:
        check_keys(state_shapes(model.state_dict()), file_shapes(f), f, what=f"the {type(model).__name__} built "
                   "from its config.json")


def load_model_strict(cls, folder, load: Callable[[], torch.nn.Module], variant: Optional[str] = None):
    """``load()`` (diffusers' ``from_pretrained`` of the ``cls`` model in ``folder``), strictly:
    a :class:`WeightsError` naming the file and the keys instead of a silently incomplete model,
    or of diffusers' own shape error."""
    try:
        model = load()
    except (ValueError, RuntimeError, OSError):
        try:  # diffusers' own refusal (a shape mismatch): name the file and the keys if they are at fault
            check_model_folder(cls, folder, variant)
        except WeightsError:
            raise
        except (ValueError, RuntimeError, OSError, TypeError):
            pass  # the check cannot run (e.g. an unreadable config): diffusers' error stands
        raise
    check_loaded_model(model, folder, variant)
    return model
