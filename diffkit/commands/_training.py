"""Arguments shared by the commands that train a model on ``diffkit.train``'s loop
(train-teacher, train-features, text train): one spelling and one meaning everywhere."""


def add_training_arguments(p, *, output: str, what: str, max_steps: int, batch_size: int, lr: float,
                           checkpoint_every: int, threads_default=None) -> None:
    p.add_argument("--output", default=output, help=f"{what} to write (default {output})")
    p.add_argument("--max-steps", type=int, default=max_steps, help=f"optimiser steps (default {max_steps})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from the latest checkpoint in --run-dir, or from the given checkpoint folder")
    p.add_argument("--run-dir", default=None, help="checkpoints and loss log (default runs/<output name>)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every)
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--threads", type=int, default=threads_default,
                   help=f"torch CPU threads (default {threads_default or 'torch' + chr(39) + 's choice'}; "
                        "1 is fastest on a busy shared machine)")
    p.add_argument("--no-progress", action="store_true")
