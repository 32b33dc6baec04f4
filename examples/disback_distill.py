"""Distil a class-conditional teacher into a one-step generator with DisBack (example-size run).

    python examples/disback_distill.py --teacher assets/digits-unet --output out/digits-onestep

Stage 1 records the teacher's degradation path toward its own one-step x̂0 (the initial
generator G⁰); Stage 2 trains the generator against that path backwards, ending on the
teacher. The result is a diffusers folder: ``diffkit sample --model out/digits-onestep``
draws with one network evaluation. Same as ``diffkit distill`` with fewer options and a
shorter run: the other settings are ``DisBackConfig``'s defaults (generator timestep 399,
docs/methods/disback.md "Defaults"). At the end it prints the generator's FID-digits beside
G⁰'s (n = 500, seed 0, one step) and says whether it improved on G⁰.
"""

import argparse
from pathlib import Path

from diffkit.distill.config import MODES
from diffkit.distill.disback import DisBackConfig, DisBackTrainer
from diffkit.images import save_grid
from diffkit.metrics.evaluators import compare_with_initial, fid_digits_evaluator
from diffkit.pipelines import load_pipeline
from diffkit.run_state import latest_checkpoint


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="digits-unet", help="teacher folder or asset name")
    p.add_argument("--output", default="out/digits-onestep")
    p.add_argument("--mode", default="disback", choices=MODES)
    p.add_argument("--max-steps", type=int, default=250, help="Stage-2 generator steps")
    p.add_argument("--stage1-steps", type=int, default=100)
    p.add_argument("--path-nodes", type=int, default=3)
    p.add_argument("--steps-per-node", type=int, default=25, help="path phase: (nodes - 1) × this many steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--fid-n", type=int, default=500, help="images of the closing FID-digits (a multiple of 10)")
    args = p.parse_args()

    teacher = load_pipeline(args.teacher)
    evaluate = fid_digits_evaluator(n=args.fid_n, seed=0, steps=1)  # needs assets/digits-features
    cfg = DisBackConfig(mode=args.mode, max_steps=args.max_steps, batch_size=args.batch_size,
                        stage1_steps=args.stage1_steps, path_nodes=args.path_nodes,
                        steps_per_node=args.steps_per_node, checkpoint_every=100, progress=False)
    run_dir = Path(args.output).with_name(Path(args.output).name + "-run")
    trainer = DisBackTrainer(teacher.unet, teacher.scheduler.config, cfg, run_dir)
    resume = "latest" if latest_checkpoint(run_dir) else None
    trainer.train(output=args.output, resume=resume)   # continues an interrupted run

    if trainer.manifest is not None:
        m = trainer.manifest
        print(f"Stage 1: nodes at steps {[n['step'] for n in m.nodes]}, {m.disk_bytes / 2**20:.2f} MiB on disk")
    last = trainer.log[-1]
    print(f"Stage 2: {last['step']} generator steps, fake loss {last['loss_fake']:.4f}, "
          f"‖x̂0_target − x̂0_fake‖ {last['mismatch']:.4f}")

    pipe = load_pipeline(args.output)          # a OneStepPipeline
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=list(range(pipe.num_classes)) * 2, seed=0, output_type="pt")
    grid = Path(args.output) / "samples.png"
    save_grid(out.images, str(grid), nrow=pipe.num_classes, upscale=4)
    print(f"wrote {args.output} (one-step generator, NFE {out.nfe}) and {grid}")

    # G⁰: the teacher's own one-step x̂0 at the generator timestep, where the training started
    c = compare_with_initial(evaluate, pipe, teacher, trainer.generator_timestep, trainer.step)
    verdict = "improved on G⁰" if c["improved"] else "did NOT improve on G⁰ (train longer)"
    print(f"FID-digits (n = {args.fid_n}, seed 0): generator {c['fid']:.3f} vs G⁰ {c['g0_fid']:.3f} "
          f"(ratio {c['ratio']:.2f}): {verdict}")


if __name__ == "__main__":
    main()
