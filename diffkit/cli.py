"""The ``diffkit`` command line: each subcommand is a module in ``diffkit.commands``.

A command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``
(returning an exit code or None); it may define ``demo_step(ctx)`` and ``DEMO_ORDER`` to
contribute a step to ``diffkit demo``, and ``ALIASES`` ({name: (help, add_arguments, run)}) for
further subcommands it serves (``sample-edm`` is ``sample`` with EDM defaults). Modules are
discovered, so adding a capability means adding one file.

Errors a user can fix (bad arguments, missing or unwritable files) print one line naming the
argument and exit with status 1. Ctrl-C (or SIGTERM during training) prints one line and exits
with 128 + the signal number (130 for Ctrl-C); a training loop first finishes its step and
writes a checkpoint (``diffkit.train.StopOnSignal``), which the line names.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from diffkit.threads import torch_threads

def command_modules():
    import diffkit.commands as pkg

    mods = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"diffkit.commands.{info.name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    from diffkit import __version__

    parser = argparse.ArgumentParser(prog="diffkit", description="diffusion sampling, exact inversion and distillation")
    parser.add_argument("--version", action="version", version=f"diffkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = []
    for mod in command_modules():
        commands.append((mod.NAME, mod.HELP, mod.add_arguments, mod.run))
        commands += [(name, *spec) for name, spec in getattr(mod, "ALIASES", {}).items()]
    for name, help_, add_arguments, run in sorted(commands, key=lambda c: c[0]):
        p = sub.add_parser(name, help=help_, description=help_)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None) -> int:
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = getattr(args, "command", None)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 0
        try:
            with torch_threads(getattr(args, "threads", None)):  # --threads of the commands that have it
                code = args._run(args)
        except (ValueError, TypeError, OSError) as e:  # OSError: FileNotFoundError, an unwritable path, ...
            print(f"diffkit {args.command}: error: {e}", file=sys.stderr)
            return 1
    except KeyboardInterrupt as e:  # Ctrl-C; a training loop raises TrainingInterrupted after its checkpoint
        if int(os.environ.get("RANK", "0")) == 0:  # one line, from one process
            why = f" by {e}" if str(e) else ""
            print(f"diffkit{' ' + command if command else ''}: interrupted{why}", file=sys.stderr)
        return int(getattr(e, "exit_code", 130))
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
