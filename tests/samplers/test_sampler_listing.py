"""``diffkit sample --list-samplers`` lists the registry (its --sampler help points there), ``diffkit
info`` names the samplers, and no command's help names an option that does not exist."""

import argparse
import re

import pytest

from diffkit.cli import build_parser, main
from diffkit.registry import available_samplers, get_sampler


@pytest.mark.parametrize("command", ["sample", "fid"])
def test_list_samplers_lists_every_registered_sampler_with_its_kind_and_description(command, capsys):
    assert main([command, "--list-samplers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(available_samplers())
    for name, line in zip(available_samplers(), lines):
        entry = get_sampler(name)
        assert line.split()[:2] == [name, entry.kind] and entry.description in line
        assert all(f" {o.name} " in line for o in entry.options)  # each declared option, with its range


def test_registry_is_the_one_sampler_name_table():
    """sample-edm's --sampler takes any registered image sampler; no command keeps its own name list."""
    from diffkit.registry import image_samplers

    names = image_samplers()
    assert "radd" not in names and {"ddim", "edm-heun", "bdia-euler", "bdia-edm"} <= set(names)
    assert set(image_samplers("function")) == {"edm-euler", "edm-heun", "bdia-euler", "bdia-heun"}


def test_one_steps_nfe_rule_per_entry():
    heun, euler, edm = get_sampler("edm-heun"), get_sampler("bdia-euler"), get_sampler("bdia-edm")
    assert [heun.nfe(n) for n in (1, 9, 18)] == [1, 17, 35] and heun.steps_for(17) == 9 and heun.steps_for(16) == 8
    assert euler.nfe(17) == 17 and euler.steps_for(17) == 17
    assert edm.nfe(9) == 9 and edm.nfe(9, {"solver": "heun"}) == 17
    assert all(heun.nfe(heun.steps_for(b)) <= b for b in range(1, 40))


def test_sampler_options_are_validated_against_the_entry():
    bdia = get_sampler("bdia-euler")
    assert bdia.check_options({"gamma": "0.25", "gamma_mode": "constant"}) == {"gamma": 0.25, "gamma_mode": "constant"}
    import numpy as np
    import torch

    assert bdia.check_options({"gamma": np.float32(0.5)})["gamma"] == 0.5
    assert bdia.check_options({"gamma": torch.tensor(1.0)})["gamma"] == 1.0
    with pytest.raises(ValueError, match=r"--option eta: sampler 'bdia-euler' has no option 'eta'; it accepts "
                                         r"gamma \(float in \[0, 1\]\), gamma_mode in \{vp, constant\}, rho"):
        bdia.check_options({"eta": 0.1})
    with pytest.raises(ValueError, match=r"option gamma of sampler 'bdia-euler' must be in \[0.0, 1.0\], got 1.5"):
        bdia.check_options({"gamma": 1.5})
    with pytest.raises(ValueError, match=r"option gamma_mode of sampler 'bdia-euler' must be one of vp, constant"):
        bdia.check_options({"gamma_mode": "linear"})
    with pytest.raises(ValueError, match=r"option gamma of sampler 'bdia-euler': expected a float, got 'high'"):
        bdia.check_options({"gamma": "high"})
    with pytest.raises(ValueError, match=r"has no option 'gamma'; it accepts none"):
        get_sampler("ddpm").check_options({"gamma": 0.5})


def test_info_names_the_registered_samplers(capsys):
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("samplers:"))
    assert all(name in line for name in available_samplers()) and "diffkit sample --list-samplers" in line


def _subparsers(parser) -> dict:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _commands(parser, path=()):
    """{("text", "sample"): parser, ...} for every (nested) subcommand."""
    out = {}
    for name, sub in _subparsers(parser).items():
        out[path + (name,)] = sub
        out.update(_commands(sub, path + (name,)))
    return out


def _resolve(parser, words):
    """The (sub)parser that ``diffkit WORDS...`` reaches, or None for an unknown command."""
    for w in words:
        subs = _subparsers(parser)
        if not subs or w.startswith("-"):
            break
        if w not in subs:
            return None
        parser = subs[w]
    return parser


def _options(parser) -> set:
    return {s for a in parser._actions for s in a.option_strings}


def test_every_option_a_help_text_names_exists():
    """A help text's ``--flag`` is an option of that command, or sits in a quoted ``diffkit CMD ...``
    that names an option of CMD (``diffkit sample --help`` once pointed at a flag only fid had).
    Arguments passed through to another program (``nargs=REMAINDER``) are exempt."""
    root = build_parser()
    problems = []
    for path, sub in _commands(root).items():
        name = " ".join(path)
        for action in sub._actions:
            if action.nargs == argparse.REMAINDER:
                continue
            text = action.help or ""
            for quoted in re.findall(r"`(diffkit [^`]+)`", text):
                target = _resolve(root, quoted.split()[1:])
                if target is None:
                    problems.append(f"{name} {action.option_strings}: `{quoted}` names no command")
                    continue
                problems += [f"{name} {action.option_strings}: `{quoted}` names {f}, which that command lacks"
                             for f in re.findall(r"--[a-z][a-z0-9-]*", quoted) if f not in _options(target)]
            bare = re.sub(r"`diffkit [^`]+`", "", text)
            problems += [f"{name} {action.option_strings}: help names {f}, which {name} lacks"
                         for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", bare) if f not in _options(sub)]
    assert len(_commands(root)) > 12 and not problems, "\n".join(problems)
