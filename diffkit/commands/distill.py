"""diffkit distill: DisBack one-step distillation of a teacher folder (resumable).

``diffkit distill --teacher assets/digits-unet --mode disback --output DIR`` records the
Stage-1 path into ``<run-dir>/stage1`` (modes disback / warm-critic / delayed-teacher), trains the generator
(Stage 2) with checkpoints in ``<run-dir>/checkpoints`` and exports the EMA generator to
``DIR`` as a ``OneStepPipeline`` (``diffkit sample --model DIR`` then uses 1 evaluation).
``DIR`` holds only the pipeline (default ``runs/distill``); the run folder ``--run-dir``
defaults to ``runs/<DIR name>``, or ``runs/<DIR name>-run`` when ``DIR`` is itself in
``runs/`` (``--output runs/onestep`` → ``runs/onestep-run``). Replacing the shipped
``assets/digits-onestep`` needs ``--replace-asset``.
``--resume`` continues a killed run exactly (Ctrl-C/SIGTERM first checkpoint the step in
progress); ``--stage1-dir`` reuses a recorded path (e.g.
one shared by the warm-critic and disback arms of an experiment); ``--stage 1`` only
records the path. Multi-process: ``accelerate launch [--cpu] --num_processes P -m
diffkit.cli distill ...`` or torchrun (add ``--cpu`` on GPU-less machines).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from diffkit.assets import AssetError
from diffkit.checks import count_arg
from diffkit.commands._outputs import check_output_dir
from diffkit.commands._training import add_output_arguments, prepare_outputs
from diffkit.distill.config import MODES, SPACINGS, WEIGHTINGS, DisBackConfig
from diffkit.pipelines import load_pipeline

NAME = "distill"
HELP = ("DisBack one-step distillation of a teacher "
        "(--teacher DIR --mode disback|vanilla|warm-critic|delayed-teacher --output DIR)")
DEMO_ORDER = 35


def add_arguments(p):
    d = DisBackConfig()
    p.add_argument("--teacher", required=True, help="teacher pipeline folder or asset name (e.g. assets/digits-unet)")
    p.add_argument("--mode", choices=MODES, default=d.mode,
                   help="disback: path targets; vanilla: fake from teacher, target teacher; warm-critic: fake from "
                        "the last Stage-1 node, target teacher; delayed-teacher: fake from the last node, target that "
                        "node for DisBack's path phase, then the teacher (an experiment's control; default "
                        "%(default)s)")
    add_output_arguments(p, command=NAME, what="folder of the exported one-step generator (a OneStepPipeline)",
                         run_what="checkpoints, Stage-1 path, logs, samples")
    p.add_argument("--stage1-dir", default=None,
                   help="use this recorded Stage-1 path (must exist) instead of recording <run-dir>/stage1")
    p.add_argument("--stage", choices=("1", "2", "all"), default="all",
                   help="1: only record the Stage-1 path; 2: only Stage 2 (the path must exist); all (default)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in --run-dir (or the given checkpoint folder); without "
                        "it a run folder that already holds a checkpoint is refused")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="Stage-2 generator steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (default %(default)s)")
    p.add_argument("--stage1-steps", type=int, default=d.stage1_steps, help="K1 (default %(default)s)")
    p.add_argument("--path-nodes", type=int, default=d.path_nodes, help="N stored nodes (default %(default)s)")
    p.add_argument("--path-spacing", choices=SPACINGS, default=d.path_spacing,
                   help="even steps, or equal steps of DSM-loss progress on a fixed G⁰ batch (default %(default)s)")
    p.add_argument("--progress-candidates", type=int, default=d.progress_candidates,
                   help="snapshots per node to choose from with --path-spacing progress (default %(default)s)")
    p.add_argument("--stage1-lr", type=float, default=d.stage1_lr,
                   help="Stage 1's learning rate (default %(default)s; 1e-4 recorded a degenerate path)")
    p.add_argument("--path-check", action="store_true",
                   help="after Stage 1, check that the path interpolates from the teacher to G⁰ (FID-digits of each "
                        "node's DDIM samples and its DSM loss; docs/methods/disback.md); a failed check warns")
    p.add_argument("--path-check-n", type=count_arg(1), default=500,
                   help="images per sample set of the path check, a multiple of 10 (default %(default)s)")
    p.add_argument("--require-path", action="store_true",
                   help="run the path check and refuse to start Stage 2 when the path fails it")
    p.add_argument("--stage1-eval-samples", type=int, default=d.stage1_eval_samples,
                   help="G⁰ samples of the Stage-1 DSM-loss measurement (default %(default)s)")
    p.add_argument("--steps-per-node", type=int, default=d.steps_per_node,
                   help="K2: generator steps per target node (default %(default)s)")
    p.add_argument("--fake-updates", type=int, default=d.fake_updates,
                   help="fake-score updates per generator step (default %(default)s; DMD2 uses 5)")
    p.add_argument("--lr-generator", type=float, default=d.lr_generator)
    p.add_argument("--lr-fake", type=float, default=d.lr_fake, help="fake score and Stage 1 (default %(default)s)")
    p.add_argument("--betas", default=",".join(str(b) for b in d.betas), help="Adam betas (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 disables (default %(default)s)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting)
    p.add_argument("--target-guidance", type=float, default=d.target_guidance)
    p.add_argument("--label-dropout", type=float, default=d.label_dropout)
    p.add_argument("--t-range", default=f"{d.t_range[0]},{d.t_range[1]}", help="lo,hi timesteps (default %(default)s)")
    p.add_argument("--generator-timestep", type=int, default=d.generator_timestep,
                   help="the generator's input timestep t_g (default %(default)s: on the digits teacher the pure-noise "
                        "input of the top timestep 999 does not distil within the default budget; "
                        "docs/methods/disback.md)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="sample grids (0: only at the end)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="FID-digits of the EMA generator every N steps (0: none; needs assets/digits-features)")
    p.add_argument("--eval-n", type=count_arg(1), default=1000,
                   help="images per FID-digits evaluation, a multiple of 10 (default %(default)s)")
    p.add_argument("--no-final-fid", action="store_true",
                   help="skip the closing FID-digits of the exported generator beside G⁰'s (a digits teacher only)")
    p.add_argument("--final-fid-n", type=count_arg(1), default=500,
                   help="images of the closing FID-digits, a multiple of 10 (default %(default)s, seed 0)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--cpu", action="store_true", help="force the CPU (gloo for several processes)")
    p.add_argument("--no-verify-teacher", action="store_true",
                   help="skip the check that the teacher's outputs match its prediction_type")
    p.add_argument("--no-progress", action="store_true")


def _pair(text: str, name: str, cast):
    try:
        a, b = (cast(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name}: expected two comma-separated numbers, got {text!r}") from None
    return a, b


def config_from_args(args):
    return DisBackConfig(
        mode=args.mode, max_steps=args.max_steps, batch_size=args.batch_size, stage1_steps=args.stage1_steps,
        path_nodes=args.path_nodes, path_spacing=args.path_spacing, progress_candidates=args.progress_candidates,
        stage1_lr=args.stage1_lr, stage1_eval_samples=args.stage1_eval_samples, steps_per_node=args.steps_per_node,
        fake_updates=args.fake_updates, lr_generator=args.lr_generator, lr_fake=args.lr_fake,
        betas=_pair(args.betas, "--betas", float), weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, weighting=args.weighting,
        target_guidance=args.target_guidance, label_dropout=args.label_dropout,
        t_range=_pair(args.t_range, "--t-range", int), generator_timestep=args.generator_timestep, seed=args.seed,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        sample_every=args.sample_every, eval_every=args.eval_every, mixed_precision=args.mixed_precision,
        verify_teacher=not args.no_verify_teacher, progress=not args.no_progress)


def run(args):
    from diffkit.distill.disback import DisBackTrainer
    from diffkit.metrics.evaluators import fid_digits_evaluator
    from diffkit.metrics.path_check import path_check_hook
    from diffkit.pipelines.one_step import require_diffusion_model

    command = "diffkit distill " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else None
    cfg = config_from_args(args)
    output, run_dir = prepare_outputs(args, NAME)
    if args.stage == "1" and args.stage1_dir:
        check_output_dir(args.stage1_dir, "--stage1-dir")  # recorded there
    pipe = load_pipeline(args.teacher)
    require_diffusion_model(pipe, "distill (its teacher)")
    if args.stage == "2" and cfg.needs_path and not args.stage1_dir:
        args.stage1_dir = str(run_dir / "stage1")  # must already exist
    evaluator = fid_digits_evaluator(n=args.eval_n) if args.eval_every else None
    final_fid, final_note = _final_fid_evaluator(args, pipe)  # before training: a bad --final-fid-n fails now
    check = None
    if args.path_check or args.require_path:
        if not cfg.needs_path:
            raise ValueError("--path-check/--require-path check the Stage-1 path of modes disback/warm-critic; "
                             "--mode vanilla has none")
        check = path_check_hook(pipe, n=args.path_check_n, seed=cfg.seed, require_path=args.require_path)
    trainer = DisBackTrainer(pipe.unet, pipe.scheduler.config, cfg, run_dir, stage1_dir=args.stage1_dir,
                             evaluator=evaluator, cpu=True if args.cpu else None, after_stage1=check)
    t0 = time.perf_counter()
    if args.stage == "1":
        if not cfg.needs_path:
            raise ValueError("--stage 1 records the path of modes disback/warm-critic; --mode vanilla has none")
        m = trainer.run_stage1()
        print(f"Stage 1: {m.num_nodes} nodes at steps {[n['step'] for n in m.nodes[1:]]}, "
              f"{m.disk_bytes / 2**20:.1f} MiB in {m.directory}")
        if check is not None:
            r = check(m)
            print(f"path check: {'accepted' if r['accepted'] else 'FAILED ' + ', '.join(r['failed'])}; distance to "
                  f"G⁰ {[round(v['fd_g0'], 3) for v in r['nodes']]} (floor {r['floor']:.3f}); DSM-loss shares "
                  f"{[round(v, 2) for v in r['criteria']['loss_share']['shares'] or []]}")
        return 0
    trainer.fit(resume=args.resume)  # None: a new run (diffkit.run_loop: one meaning of resume)
    if trainer.accelerator.is_main_process:
        trainer.export(output, {"command": command, "teacher": str(args.teacher), "run_dir": str(run_dir)})
        last = trainer.log[-1] if trainer.log else {}
        print(f"distilled {trainer.step} generator steps ({cfg.mode}; "
              f"fake loss {last.get('loss_fake', float('nan')):.4f}, "
              f"mismatch {last.get('mismatch', float('nan')):.4f}; {time.perf_counter() - t0:.0f} s this session); "
              f"wrote {output}; checkpoints in {run_dir}")
        if final_fid is None:
            print(f"final FID-digits: {final_note}")
        else:
            _report_final_fid(final_fid, pipe, output, trainer, args.final_fid_n)
    trainer.accelerator.wait_for_everyone()
    return 0


def _final_fid_evaluator(args, pipe):
    """The closing FID-digits evaluator (n = ``--final-fid-n``, seed 0, one step), or None and the reason."""
    if args.no_final_fid:
        return None, "skipped (--no-final-fid)"
    if args.final_fid_n % 10:
        raise ValueError(f"--final-fid-n: FID-digits draws a class-balanced set, a multiple of 10; "
                         f"got {args.final_fid_n}")
    from diffkit.conditioning import num_classes
    from diffkit.metrics.evaluators import fid_digits_evaluator

    cfg = pipe.unet.config
    if num_classes(pipe.unet) != 10 or cfg.sample_size != 8 or cfg.in_channels != 1:
        return None, "skipped (it needs a class-conditional 8×8 grey digits teacher such as digits-unet)"
    try:
        return fid_digits_evaluator(n=args.final_fid_n, seed=0, steps=1), None
    except AssetError as e:  # the feature-net asset is optional
        return None, f"skipped ({e})"


def _report_final_fid(evaluate, teacher_pipe, output, trainer, n: int) -> dict:
    """FID-digits of the exported generator beside G⁰'s (the teacher's x̂0 at the generator timestep; same n,
    seed, labels), printed and stored as ``final_fid`` in the run summary."""
    from diffkit.atomic import write_text_atomically
    from diffkit.metrics.evaluators import compare_with_initial

    t_g = trainer.generator_timestep
    gen = load_pipeline(output).to(teacher_pipe.unet.device)
    record = {"seed": 0, **compare_with_initial(evaluate, gen, teacher_pipe, t_g, trainer.step)}
    verdict = "improved on G⁰" if record["improved"] else "did NOT improve on G⁰"
    print(f"FID-digits (n = {n}, seed 0, one step): {record['fid']:.3f} (top-1 {record['top1']:.3f}) vs G⁰'s "
          f"{record['g0_fid']:.3f} (the teacher's x̂0 at t_g = {t_g}, top-1 {record['g0_top1']:.3f}): "
          f"ratio {record['ratio']:.2f}, {verdict}")
    path = trainer.run_dir / trainer.summary_file
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary["final_fid"] = record
    write_text_atomically(path, json.dumps(summary, indent=1) + "\n")
    return record


def demo_step(ctx):
    """One-step samples of the shipped distilled generator beside the teacher's DDIM samples."""
    import torch

    from diffkit.images import save_grid

    try:
        one, teacher = load_pipeline("digits-onestep"), load_pipeline("digits-unet")
    except AssetError as e:
        ctx.say(f"- One-step distillation: skipped ({e})")
        return
    for p in (one, teacher):
        p.set_progress_bar_config(disable=True)
    labels = list(range(10)) * 2
    steps = 10 if ctx.quick else 50
    t0 = time.perf_counter()
    x1 = one(class_labels=labels, seed=0, output_type="pt").images
    t1 = time.perf_counter()
    xt = teacher(class_labels=labels, num_inference_steps=steps, seed=0, output_type="pt", progress=False).images
    t2 = time.perf_counter()
    path = save_grid(torch.cat([x1, xt]), ctx.path("onestep_vs_teacher.png"), nrow=10, upscale=4)
    try:
        from diffkit.metrics.digits import top1_accuracy

        cls = f"; feature-net top-1 of the one-step samples {top1_accuracy(x1, labels):.2f}"
    except AssetError as e:  # the feature-net asset is optional for the demo
        cls = f"; no class check ({e})"
    facts = Path(one.name_or_path or "") / "distill.json"
    mode = json.loads(facts.read_text()).get("config", {}).get("mode") if facts.is_file() else None
    ctx.say(f"- One-step generator (assets/digits-onestep, DisBack trainer in {mode or 'an unrecorded'} mode): "
            f"20 images in {t1 - t0:.3f} s "
            f"(1 evaluation each) vs the teacher's DDIM-{steps} in {t2 - t1:.2f} s{cls} -> "
            f"`{Path(path).name}` (rows 1-2 one-step, rows 3-4 teacher)")
