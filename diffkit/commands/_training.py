"""Arguments shared by the commands that train a model on ``diffkit.train``'s loop
(train-teacher, train-features, text train; distill for the outputs): one spelling and one
meaning everywhere.

Outputs: ``--output`` (default ``runs/<command>``) is the exported model's folder and
``--run-dir`` (default ``runs/<output name>``, or ``runs/<output name>-run`` when the output is
itself in ``runs/``) holds the checkpoints and logs, never inside the model's folder. A path in
the shipped assets folder is only written with ``--replace-asset`` (the rebuild commands of
``diffkit.assets.REBUILD``). :func:`prepare_outputs` checks all of this, and that the folders
can be written, before any training starts.
"""

from __future__ import annotations

from pathlib import Path

from diffkit.assets import REBUILD, assets_root, shipped_asset_target
from diffkit.commands._outputs import OutputError, check_output_dir


def add_output_arguments(p, *, command: str, what: str, run_what: str = "checkpoints and loss log") -> None:
    default = f"runs/{command}"
    p.add_argument("--output", default=default,
                   help=f"{what} to write (default {default}, relative to the current folder; runs/ is git-ignored "
                        "in a diffkit checkout). A folder in the shipped assets (assets/NAME, or a bare asset name) "
                        "is only replaced with --replace-asset")
    p.add_argument("--replace-asset", action="store_true",
                   help="allow --output to replace a shipped model in assets/ (what the rebuild commands do)")
    p.add_argument("--run-dir", default=None,
                   help=f"{run_what} (default runs/<output name>, or runs/<output name>-run when --output is "
                        "itself that folder; never inside --output)")


def add_training_arguments(p, *, command: str, what: str, max_steps: int, batch_size: int, lr: float,
                           checkpoint_every: int, threads_default=None) -> None:
    add_output_arguments(p, command=command, what=what)
    p.add_argument("--max-steps", type=int, default=max_steps, help=f"optimiser steps (default {max_steps})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from the latest checkpoint in --run-dir, or from the given checkpoint folder")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every)
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--threads", type=int, default=threads_default,
                   help=f"torch CPU threads (default {threads_default or 'torch' + chr(39) + 's choice'}; "
                        "1 is fastest on a busy shared machine)")
    p.add_argument("--no-progress", action="store_true")


def prepare_outputs(args, command: str) -> tuple[Path, Path]:
    """(output folder, run folder) of a training command, checked before any work.

    * ``--output`` in the shipped assets folder (or a bare asset name) needs ``--replace-asset``;
      with it, a bare name means the shipped asset's folder.
    * ``--run-dir`` is never the output folder or inside it, nor in the shipped assets.
    * both can be written (:mod:`diffkit.commands._outputs`).
    """
    from diffkit.train import resolve_run_dir  # torch: imported when a command runs, not for --help

    output = Path(args.output)
    target = shipped_asset_target(output)
    if target is not None:
        if not args.replace_asset:
            raise OutputError(f"--output {args.output} is in the shipped assets ({target}): replacing a shipped model "
                              f"needs --replace-asset (the rebuild commands pass it); to train a model of your own, "
                              f"choose another --output (default runs/{command})")
        if str(args.output) in REBUILD and not output.exists():  # a bare asset name: the shipped folder
            output = target
    run_dir = resolve_run_dir(output, args.run_dir)
    if shipped_asset_target(run_dir) is not None:
        raise OutputError(f"--run-dir {run_dir} is in the shipped assets ({assets_root()}): checkpoints and logs do "
                          "not belong there; choose another --run-dir")
    check_output_dir(output, "--output", replace=True)
    check_output_dir(run_dir, "--run-dir")
    return output, run_dir
