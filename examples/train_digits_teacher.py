"""Train a small class-conditional diffusion model on the embedded digits, then sample it.

A short version of `diffkit train-teacher` written out with the library pieces, to copy
and adapt: swap the batch source (where x0 comes from) or the loss, keep the loop.

    python examples/train_digits_teacher.py --steps 300 --output my-teacher
    # multi-process (CPU): accelerate launch --cpu --num_processes 2 examples/train_digits_teacher.py ...
"""

import argparse

import torch
from diffusers import DDIMScheduler, UNet2DModel

from diffkit.data import digits_tensors
from diffkit.images import save_grid
from diffkit.pipelines.class_conditional import ClassConditionalPipeline
from diffkit.train import DDPMEpsLoss, IndexedDataSource, Trainer, TrainConfig


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=["tiny", "small"], default="small")
    p.add_argument("--output", default="my-digits-teacher")
    args = p.parse_args()

    channels = {"tiny": (16, 32), "small": (32, 64)}[args.preset]
    torch.manual_seed(args.seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=channels, layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=11)  # 10 digits + the null class 10 (classifier-free guidance)
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)  # the training noise schedule

    images, labels = digits_tensors("train")                   # (N, 1, 8, 8) in [-1, 1], (N,)
    source = IndexedDataSource(images, labels, seed=args.seed)  # x0 for global sample indices
    loss = DDPMEpsLoss(scheduler.config, seed=args.seed, label_dropout=0.1, null_class=10)
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=1e-3, warmup_steps=min(100, args.steps),
                         checkpoint_every=100, seed=args.seed)
    trainer = Trainer(unet, loss, source, config, run_dir=f"{args.output}-run")
    result = trainer.fit(resume="latest" if (trainer.run_dir / "checkpoints").is_dir() else None)
    print(f"{result.step} steps, final loss {result.final_loss:.4f}")

    if trainer.accelerator.is_main_process:
        pipe = ClassConditionalPipeline(trainer.ema_model(), scheduler)
        pipe.save_pretrained(args.output)                       # loads with diffkit.pipelines.load_pipeline
        out = pipe(class_labels=list(range(10)) * 2, num_inference_steps=20, seed=0, output_type="pt", progress=False)
        save_grid(out.images, f"{args.output}/samples.png", nrow=10, upscale=4)
        print(f"wrote {args.output} and {args.output}/samples.png")


if __name__ == "__main__":
    main()
