"""Distil a class-conditional teacher into a one-step generator with DisBack (tiny run).

    python examples/disback_distill.py --teacher assets/digits-unet --output out/digits-onestep

Stage 1 records the teacher's degradation path toward its own one-step x̂0 (the initial
generator); Stage 2 trains the generator against that path backwards, ending on the
teacher. The result is a diffusers folder: ``diffkit sample --model out/digits-onestep``
draws with one network evaluation. Same as ``diffkit distill`` with fewer options.
"""

import argparse
from pathlib import Path

from diffkit.distill.disback import DisBackConfig, DisBackTrainer
from diffkit.run_state import latest_checkpoint
from diffkit.images import save_grid
from diffkit.pipelines import load_pipeline


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="digits-unet", help="teacher folder or asset name")
    p.add_argument("--output", default="out/digits-onestep")
    p.add_argument("--mode", default="disback", choices=("disback", "vanilla", "warm-critic"))
    p.add_argument("--max-steps", type=int, default=300, help="generator steps")
    p.add_argument("--stage1-steps", type=int, default=100)
    p.add_argument("--path-nodes", type=int, default=5)
    p.add_argument("--steps-per-node", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--fake-updates", type=int, default=1)
    args = p.parse_args()

    teacher = load_pipeline(args.teacher)
    cfg = DisBackConfig(mode=args.mode, max_steps=args.max_steps, batch_size=args.batch_size,
                        stage1_steps=args.stage1_steps, path_nodes=args.path_nodes,
                        steps_per_node=args.steps_per_node, fake_updates=args.fake_updates,
                        checkpoint_every=100, progress=False)
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
    out = pipe(class_labels=list(range(pipe.num_classes)) * 2, seed=0, output_type="pt")
    grid = Path(args.output) / "samples.png"
    save_grid(out.images, str(grid), nrow=pipe.num_classes, upscale=4)
    print(f"wrote {args.output} (one-step generator, NFE {out.nfe}) and {grid}")


if __name__ == "__main__":
    main()
