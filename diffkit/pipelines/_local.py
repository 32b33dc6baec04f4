"""``from_pretrained`` for diffkit's own pipelines: local folders and shipped assets only.

diffusers' ``DiffusionPipeline.from_pretrained`` takes a string that is not an existing folder
for a Hub repository id, so ``ClassConditionalPipeline.from_pretrained("assets/digits-unet")``
run outside the repository root went to the Hub and failed with an unrelated OSError. diffkit's
pipelines resolve the name or path the way ``load_pipeline`` and the CLI do
(:func:`diffkit.assets.asset_path`: an existing folder as given, else a shipped asset named
``digits-unet`` or ``assets/digits-unet``) and load with ``local_files_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffkit.assets import asset_path

__all__ = ["LocalFolderPipelineMixin", "local_folder"]


def local_folder(name_or_path) -> Path:
    """The pipeline folder for a path or shipped asset name; an AssetError (naming the folder and,
    for a shipped asset, the command that rebuilds it) when there is none. Never the network."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name_or_path: expected a folder path or a shipped asset name, "
                        f"got {type(name_or_path).__name__}")
    return asset_path(name_or_path, required=("model_index.json",))


class LocalFolderPipelineMixin:
    """Put before ``DiffusionPipeline`` in a diffkit pipeline's bases."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load from a local pipeline folder or a shipped asset (``digits-unet``, ``assets/digits-unet``);
        nothing is looked up on the Hub (``local_files_only`` is always True)."""
        if kwargs.get("local_files_only", True) is not True:
            raise ValueError(f"local_files_only: diffkit pipelines load local folders only, got "
                             f"{kwargs['local_files_only']!r}")
        kwargs["local_files_only"] = True
        folder = local_folder(pretrained_model_name_or_path)
        return super().from_pretrained(str(folder), *args, **kwargs)
