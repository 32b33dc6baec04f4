"""Installed versions of distributions, read from their metadata (nothing is imported, so a broken
optional package such as xformers cannot fail the caller)."""

from __future__ import annotations

from importlib import metadata
from typing import Iterable

__all__ = ["OMIT", "package_versions"]

#: ``missing=OMIT``: leave a distribution that is not installed out of the result
OMIT = object()


def package_versions(names: Iterable[str], missing=None) -> dict:
    """{name: version} for each distribution; one that is not installed maps to ``missing``
    (or is left out with ``missing=OMIT``)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing is not OMIT:
                out[name] = missing
    return out
