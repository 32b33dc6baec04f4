"""Count checks shared by the sampling entrances: the pipelines' calls, ``ModelSamples``, the
functional samplers' grids (API) and the commands' argparse types (CLI), with one message
that names the argument and the accepted range."""

from __future__ import annotations

import argparse
import numbers

__all__ = ["check_count", "count_arg"]


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
