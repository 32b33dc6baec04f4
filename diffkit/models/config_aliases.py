"""Old config names kept readable: a diffusers ``ConfigMixin`` class whose config keys were renamed
still loads configs (and takes keyword arguments) under the old names.

``ConfigAliasMixin`` renames the old keys of a config dict before diffusers matches them to the
``__init__`` signature (``from_config`` / ``from_pretrained`` go through ``extract_init_dict``), so
a saved ``scheduler_config.json`` / ``config.json`` with the old names loads without the "not
expected and will be ignored" warning and without the old keys coming back as hidden config
entries. A direct constructor call with an old name goes through :func:`resolve_aliases` in the
class's ``__init__``. New saves write the new names only.
"""

from __future__ import annotations

from typing import Mapping

from diffusers.configuration_utils import FrozenDict

__all__ = ["ConfigAliasMixin", "rename_aliases", "resolve_aliases"]


def rename_aliases(values: Mapping, aliases: Mapping[str, str], owner: str) -> dict:
    """``values`` with every old key of ``aliases`` (old -> new) renamed. Giving both names with
    different values is an error naming both."""
    out = dict(values)
    for old, new in aliases.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ValueError(f"{owner}: {old}={value!r} (the old name of {new}) conflicts with {new}={out[new]!r}; "
                             f"pass {new} only")
        out[new] = value
    return out


def resolve_aliases(obj, given: Mapping[str, object], current: Mapping[str, object]) -> dict:
    """In ``__init__``: ``given`` = the old-name arguments (None = not given), ``current`` = the new-name
    values received. Returns the new-name values to use, registered in ``obj``'s config (and no longer
    listed as defaults, so ``from_config(obj.config)`` keeps them)."""
    aliases = type(obj)._config_aliases
    passed = {old: v for old, v in given.items() if v is not None}
    if not passed:
        return dict(current)
    renamed = {aliases[old]: v for old, v in passed.items()}
    defaults = set(obj.config.get("_use_default_values", ()))
    for new, value in renamed.items():
        if new not in defaults and current[new] != value:
            old = next(o for o, n in aliases.items() if n == new)
            raise ValueError(f"{type(obj).__name__}: {old}={value!r} (the old name of {new}) conflicts with "
                             f"{new}={current[new]!r}; pass {new} only")
    values = {**current, **renamed}
    obj.register_to_config(**renamed)
    d = dict(obj._internal_dict)
    if "_use_default_values" in d:
        d["_use_default_values"] = [k for k in d["_use_default_values"] if k not in renamed]
    obj._internal_dict = FrozenDict(d)
    return values


class ConfigAliasMixin:
    """Mix in before ``ConfigMixin``; set ``_config_aliases = {"old": "new", ...}`` and list the old
    names in ``ignore_for_config`` (they are ``__init__`` arguments defaulting to None)."""

    _config_aliases: dict = {}

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        config_dict = rename_aliases(config_dict, cls._config_aliases, cls.__name__)
        kwargs = rename_aliases(kwargs, cls._config_aliases, cls.__name__)
        return super().extract_init_dict(config_dict, **kwargs)
