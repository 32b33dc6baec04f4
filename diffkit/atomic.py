"""Atomic writes: a reader, or a resumed run, sees the old complete file/folder or the new
one, never a half-written one (a kill mid-write leaves only a hidden ``.tmp-`` sibling).

Permissions: what diffkit writes gets the mode a plain ``open(path, "w")`` / ``mkdir`` gives
under the process's umask (0644 / 0755 under the usual 022), an existing file keeping its own.
``safetensors.torch.save_file`` (and so diffusers' ``save_pretrained``) creates its files with
mode 0600 whatever the umask, and ``tempfile.mkstemp`` / ``mkdtemp`` do the same; diffkit
therefore writes safetensors through :func:`save_safetensors` (plain file writes) and wraps
diffusers' ``save_pretrained`` in :func:`umask_permissions`."""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

__all__ = ["atomic_path", "write_text_atomically", "write_bytes_atomically", "write_json_atomically",
           "save_safetensors", "staging_dir", "replace_dir", "current_umask", "umask_permissions", "UmaskSaveMixin"]


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``, keeping the mode of the file it replaces (as a rewrite would)."""
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    except FileNotFoundError:
        pass
    os.replace(tmp, path)


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path`` for any writer to write to: when the block ends without
    an exception it is renamed to ``path`` (``os.replace``, keeping an existing file's mode);
    when it raises (Ctrl-C included) the temporary file is removed and ``path`` is untouched.
    The temporary name is hidden and keeps ``path``'s suffix, so writers that pick a format from
    the suffix (PIL, matplotlib) see the same one::

        with atomic_path("figure.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _replace(tmp, path)


def write_text_atomically(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomically(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_safetensors(tensors: dict, path, metadata: Optional[dict] = None) -> Path:
    """``safetensors.torch.save_file``, written atomically with a plain file write (so with the
    umask's permissions, not save_file's 0600). ``tensors``: name -> contiguous CPU tensor."""
    from safetensors.torch import save

    path = Path(path)
    write_bytes_atomically(path, save(tensors, metadata=metadata))
    return path


def write_json_atomically(path, obj, indent: int = 1) -> None:
    """``obj`` as JSON (a benchmark's results, a run summary); creates the parent folder."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(obj, indent=indent) + "\n")


def staging_dir(final) -> Path:
    """A fresh, empty sibling folder of ``final`` to write into before :func:`replace_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def replace_dir(tmp, final, produced: Optional[Iterable[str]] = None) -> Path:
    """Move the complete folder ``tmp`` to ``final``. With ``produced`` (the entry names the
    writer makes), entries of an existing ``final`` outside that set and absent from ``tmp``
    (a model card, PNGs, a corpus snapshot) are carried over instead of being lost."""
    tmp, final = Path(tmp), Path(final)
    if final.exists() and produced is not None:
        produced = set(produced)
        for f in final.iterdir():
            if f.name not in produced and not (tmp / f.name).exists():
                os.replace(f, tmp / f.name)
    if final.exists():
        # Two renames, not one: os.replace cannot replace a non-empty directory.
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def current_umask() -> int:
    """The process's umask, read from /proc where available (without changing it), else by
    setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _entries(root: Path) -> Iterator[Path]:
    """``root`` and, for a folder, everything below it (symbolic links are not followed)."""
    if not os.path.lexists(root):
        return
    yield root
    if root.is_dir() and not root.is_symlink():
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                yield Path(folder) / name


@contextmanager
def umask_permissions(target) -> Iterator[Path]:
    """Entries that the block creates at or under ``target`` (a file or a folder) get the mode a
    plain ``open(..., "w")`` or ``mkdir`` would give them under the current umask; entries that
    existed keep the mode they had (as a plain rewrite of a file keeps it). For writers diffkit
    does not control, such as diffusers' ``save_pretrained`` (its safetensors files are 0600)."""
    target = Path(target)
    before = {p: stat.S_IMODE(p.lstat().st_mode) for p in _entries(target)}
    yield target
    mask = current_umask()
    for p in _entries(target):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        want = before.get(p)
        if want is None:
            want = (0o777 if stat.S_ISDIR(st.st_mode) else 0o666) & ~mask
        if stat.S_IMODE(st.st_mode) != want:
            os.chmod(p, want)


class UmaskSaveMixin:
    """For diffusers classes: ``save_pretrained`` inside :func:`umask_permissions`, so the saved
    folder gets plain permissions (diffusers' safetensors files are otherwise 0600)."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        with umask_permissions(save_directory):
            return super().save_pretrained(save_directory, *args, **kwargs)
