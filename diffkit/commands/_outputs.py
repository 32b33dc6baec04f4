"""Up-front checks of the paths a command writes, so that an unwritable ``--output`` fails in
one line naming the argument before any work is done, not as an OSError traceback at the end.

The checks create nothing: a missing folder is fine when its nearest existing ancestor is a
writable folder (the command creates the rest).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["OutputError", "check_output_file", "check_output_dir"]


class OutputError(ValueError):
    """A path argument the command could not write (the message names the argument)."""


def _nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable_folder(folder: Path, arg: str, path) -> None:
    """``folder`` exists and is writable, or can be created (its nearest existing ancestor is)."""
    anc = _nearest_existing(folder)
    if not anc.is_dir():
        raise OutputError(f"{arg} {path}: cannot create folder {folder}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{arg} {path}: folder {anc} is not writable")


def check_output_file(path, arg: str = "--output") -> None:
    """``path`` can be written as a file: it is not a folder, and its folder exists and is
    writable or can be created (files are written beside themselves and renamed into place)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{arg} {path} is a folder; give a file name")
    _writable_folder(Path(os.path.abspath(p)).parent, arg, path)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{arg} {path}: the file exists and is not writable")


def check_output_dir(path, arg: str = "--output", replace: bool = False) -> None:
    """``path`` can be written as a folder: not a file; writable, or creatable. ``replace``: the
    folder is published as a whole (staged beside it, then renamed), so its parent must be
    writable too."""
    if path is None:
        return
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise OutputError(f"{arg} {path} is a file; give a folder")
    if p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{arg} {path}: folder is not writable")
    if replace or not p.is_dir():
        _writable_folder(Path(os.path.abspath(p)).parent, arg, path)
