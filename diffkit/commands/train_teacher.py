"""diffkit train-teacher: train the class-conditional digits teacher (assets/digits-unet).

The recipe: a diffusers ``UNet2DModel`` (8×8, 1 channel, ``num_class_embeds = 11``: ten
digits + the null class 10), the ε-prediction DDPM loss on a linear-β DDPM schedule
(1,000 steps) with label dropout 0.1 to the null class, AdamW, EMA, on the train split of
``diffkit.data``. The result is written with ``save_pretrained`` as a
``ClassConditionalPipeline`` folder (``unet/`` with EMA weights, ``scheduler/`` a
``DDIMScheduler`` config of the training schedule, ``model_index.json``), plus
``training.json`` (the facts the model card quotes).

``--output`` defaults to ``runs/train-teacher``; rebuilding the shipped teacher needs
``--output assets/digits-unet --replace-asset``. Checkpoints go to ``--run-dir`` (default
``runs/<output folder name>``, or ``runs/<name>-run`` when the output is itself in ``runs/``:
``diffkit.train.default_run_dir``); ``--resume`` continues from its latest checkpoint (or a
given one) exactly; Ctrl-C/SIGTERM first checkpoints the step in progress. Because the learning rate is
constant after warm-up, a run stopped at step N equals a ``--max-steps N`` run.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from diffkit.assets import AssetError
from diffkit.atomic import replace_dir, staging_dir
from diffkit.checks import count_arg
from diffkit.commands._training import add_training_arguments, prepare_outputs
from diffkit.pipelines import load_pipeline
from diffkit.weights import MANIFEST, write_manifest

NAME = "train-teacher"
HELP = "train the class-conditional digits teacher (rebuild assets/digits-unet with --replace-asset)"
DEMO_ORDER = 10

#: UNet2DModel presets: "digits" is the shipped teacher; "tiny" is for tests and examples.
PRESETS = {
    "digits": dict(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=16, attention_head_dim=32,
                   down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
    "tiny": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
}

#: The training noise schedule, saved as the asset's scheduler (DDIM sampling by default).
SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                 clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                 prediction_type="epsilon")

LABEL_DROPOUT = 0.1


def add_arguments(p):
    add_training_arguments(p, command=NAME, what="pipeline folder", max_steps=4000, batch_size=128, lr=1e-3,
                           checkpoint_every=500)
    p.add_argument("--preset", choices=sorted(PRESETS), default="digits", help="UNet size (tiny: tests)")
    p.add_argument("--eval-every", type=count_arg(0), default=0,
                   help="FID-digits of the EMA teacher every N steps and at the end (0: none; needs "
                        "assets/digits-features)")
    p.add_argument("--eval-n", type=count_arg(1), default=1000,
                   help="images per FID-digits evaluation (default %(default)s)")
    p.add_argument("--eval-steps", type=count_arg(1), default=50,
                   help="DDIM steps of the evaluation samples (default %(default)s)")


def unet_config(preset: str = "digits") -> dict:
    from diffkit.data import NUM_CLASSES

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return dict(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=NUM_CLASSES + 1, **PRESETS[preset])


def build_unet(preset: str = "digits", seed: int = 0):
    import torch
    from diffusers import UNet2DModel

    # Initialise under a private generator state: the global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**unet_config(preset))


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER)


def train_teacher(output, max_steps: int = 4000, seed: int = 0, resume=None, run_dir=None, batch_size: int = 128,
                  lr: float = 1e-3, preset: str = "digits", checkpoint_every: int = 500, keep_checkpoints: int = 2,
                  progress: bool = True, accelerator=None, command: str | None = None, evaluator=None,
                  eval_every: int = 0):
    """Train (or resume) the teacher and export its EMA weights to ``output``; returns the TrainResult.

    ``evaluator(pipe, step) -> dict`` (e.g. :func:`diffkit.metrics.evaluators.fid_digits_evaluator`)
    gets a ClassConditionalPipeline of the EMA weights every ``eval_every`` steps and at the end;
    the results go to ``train_summary.json`` and ``training.json``."""
    from diffkit.data import NUM_CLASSES, TEST_EVERY, digits_tensors
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.train import DDPMEpsLoss, IndexedDataSource, Trainer, TrainConfig, resolve_run_dir

    output = Path(output)
    run_dir = resolve_run_dir(output, run_dir)
    x, y = digits_tensors("train")
    scheduler = build_scheduler()
    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=200, grad_clip=1.0,
                      ema_decay=0.999, seed=seed, checkpoint_every=checkpoint_every,
                      keep_checkpoints=keep_checkpoints, progress=progress)
    model_evaluator = None
    if evaluator is not None:
        def model_evaluator(model, step):  # the trainer hands over the EMA model; the metric wants a pipeline
            pipe = ClassConditionalPipeline(model, scheduler)
            pipe.set_progress_bar_config(disable=True)
            return evaluator(pipe, step)

    trainer = Trainer(build_unet(preset, seed), DDPMEpsLoss(scheduler.config, seed=seed, label_dropout=LABEL_DROPOUT,
                                                            null_class=NUM_CLASSES),
                      IndexedDataSource(x, y, seed=seed), cfg, run_dir, accelerator=accelerator,
                      meta={"preset": preset, "what": "digits teacher"}, evaluator=model_evaluator,
                      eval_every=eval_every)
    result = trainer.fit(resume=resume)
    if trainer.accelerator.is_main_process:
        facts = {
            "command": command,
            "steps": result.step,
            "batch_size": batch_size,
            "learning_rate": lr,
            "warmup_steps": cfg.warmup_steps,
            "ema_decay": cfg.ema_decay,
            "grad_clip": cfg.grad_clip,
            "label_dropout": LABEL_DROPOUT,
            "seed": seed,
            "preset": preset,
            "parameters": sum(p.numel() for p in trainer.unwrapped.parameters()),
            "final_loss": result.final_loss,
            "final_loss_window_steps": min(100, len(result.log)),
            "wall_time_s": round(result.wall_time_s, 1),
            "processes": trainer.accelerator.num_processes,
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch {__import__('torch').__version__}",
            "data": f"sklearn load_digits train split ({len(y)} images; every {TEST_EVERY}th image of each class "
                    "held out)",
        }
        if trainer.evals:
            facts["evals"] = trainer.evals
        export_pipeline(trainer.ema_model(), scheduler, output, facts)
    trainer.accelerator.wait_for_everyone()
    return result


def export_pipeline(unet, scheduler, output, facts: dict | None = None) -> Path:
    """Write a ClassConditionalPipeline folder atomically (staging folder renamed into place)."""
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    tmp = staging_dir(output)
    ClassConditionalPipeline(unet.eval(), scheduler).save_pretrained(str(tmp), safe_serialization=True)
    if facts is not None:
        (tmp / "training.json").write_text(json.dumps(facts, indent=1) + "\n")
    write_manifest(tmp)
    # keep files the quality report added (model card, PNGs) unless re-exported
    return replace_dir(tmp, output, produced=("unet", "scheduler", "model_index.json", "training.json", MANIFEST))


def demo_step(ctx):
    """Per-class samples of the shipped teacher, scored by the shipped feature network."""
    import torch

    from diffkit.images import save_grid
    from diffkit.metrics.digits import classify, sample_digits

    try:
        pipe = load_pipeline("digits-unet")
    except AssetError as e:
        ctx.say(f"- Digits teacher: skipped ({e})")
        return
    per, steps = (4, 10) if ctx.quick else (8, 25)
    labels = torch.arange(10).repeat_interleave(per)  # row k of the grid = digit k
    t0 = time.perf_counter()  # under the demo's --threads (default 1)
    x = sample_digits(pipe, labels, seed=0, steps=steps, guidance=1.0)
    dt = time.perf_counter() - t0
    path = save_grid(x, ctx.path("digits_per_class.png"), nrow=per, upscale=4)
    try:
        acc = f"; feature-net top-1 {(classify(x) == labels.numpy()).mean():.2f}"
    except AssetError:
        acc = ""
    ctx.say(f"- Digits teacher (`assets/digits-unet`, {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}M "
            f"params): {per} DDIM-{steps} samples per class in {dt:.1f} s{acc} -> `{os.path.basename(path)}`")


def run(args):
    command = "diffkit train-teacher " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else None
    output, run_dir = prepare_outputs(args, NAME)
    evaluator = None
    if args.eval_every:
        from diffkit.metrics.evaluators import fid_digits_evaluator

        evaluator = fid_digits_evaluator(n=args.eval_n, steps=args.eval_steps)
    t0 = time.perf_counter()
    res = train_teacher(output, max_steps=args.max_steps, seed=args.seed, resume=args.resume,
                        run_dir=run_dir, batch_size=args.batch_size, lr=args.lr, preset=args.preset,
                        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                        progress=not args.no_progress, command=command, evaluator=evaluator,
                        eval_every=args.eval_every)
    loss = "n/a" if res.final_loss is None else f"{res.final_loss:.4f}"
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {res.step} steps (final loss {loss}, {res.wall_time_s:.0f} s of training, "
              f"{time.perf_counter() - t0:.0f} s this session); wrote {output}; checkpoints in {res.run_dir}")
