"""Count checks shared by the sampling entrances: the pipelines' calls, ``ModelSamples``, the
functional samplers' grids (API) and the commands' argparse types (CLI), with one message
that names the argument and the accepted range; and the image-file suffix check shared by
``diffkit.images`` and the commands that write images."""

from __future__ import annotations

import argparse
import numbers
import os

__all__ = ["check_count", "count_arg", "IMAGE_FORMATS", "IMAGE_OUTPUT_HELP", "image_format",
           "image_path_arg"]

#: image file suffix -> the PIL format written for it
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}
#: the help text of an image ``--output``
IMAGE_OUTPUT_HELP = f"image file; its suffix picks the format ({', '.join(IMAGE_FORMATS)})"


def _message(minimum: int, value, what: str = "") -> str:
    return f"must be an integer >= {minimum}{what}, got {value!r}"


def check_count(value, name: str, minimum: int = 1, what: str = "") -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (bools are not counts), else a
    ValueError: "``name`` must be an integer >= ``minimum````what``, got ``value``"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} {_message(minimum, value, what)}")
    return int(value)


def count_arg(minimum: int = 1):
    """An argparse ``type`` for counts: an integer >= ``minimum``, else argparse's usage error
    "argument --steps: must be an integer >= 1, got '-3'" (exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(_message(minimum, text)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(_message(minimum, text))
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def image_format(path, name: str = "output") -> str:
    """The PIL format that ``path``'s suffix names (case-insensitive), else a ValueError that
    names ``name`` and the accepted suffixes."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in IMAGE_FORMATS:
        what = f"the suffix {suffix!r}" if suffix else "no suffix"
        raise ValueError(f"{name} {str(path)!r} has {what}; the image format is taken from the suffix, accepted: "
                         f"{', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def image_path_arg(text: str) -> str:
    """An argparse ``type`` for image outputs: an unknown suffix is a usage error before any work."""
    try:
        image_format(text, "image file")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
