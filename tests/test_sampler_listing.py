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
        assert line.split()[:2] == [name, entry.kind] and line.endswith(entry.description)


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
