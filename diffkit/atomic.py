"""Atomic writes: a reader, or a resumed run, sees the old complete file/folder or the new
one, never a half-written one (a kill mid-write leaves only a hidden ``.tmp-`` sibling)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["write_text_atomically", "write_json_atomically", "staging_dir", "replace_dir"]


def write_text_atomically(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
