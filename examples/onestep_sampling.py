"""Sample the shipped one-step digits generator: one network evaluation per image.

    python examples/onestep_sampling.py                          # 10 of each digit -> onestep.png
    python examples/onestep_sampling.py --per-class 2 --seed 3 --output few.png

``assets/digits-onestep`` is a diffusers folder (``OneStepPipeline``) distilled from the
digits teacher; ``load_pipeline`` accepts the asset name or a folder (e.g. your own
``diffkit distill`` output). The feature network reads back the class of every sample.
"""

import argparse
import time

import torch

from diffkit.checks import IMAGE_OUTPUT_HELP, image_path_arg
from diffkit.images import save_grid
from diffkit.metrics.digits import classify
from diffkit.pipelines import load_pipeline


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits-onestep", help="asset name or OneStepPipeline folder")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="onestep.png", type=image_path_arg, help=IMAGE_OUTPUT_HELP)
    args = p.parse_args()

    pipe = load_pipeline(args.model)
    labels = torch.arange(pipe.num_classes).repeat(args.per_class)   # 0..9, 0..9, ...
    t0 = time.perf_counter()
    images = pipe(class_labels=labels, seed=args.seed, output_type="pt").images   # [-1, 1], one UNet call
    dt = time.perf_counter() - t0
    save_grid(images, args.output, nrow=pipe.num_classes, upscale=4)
    acc = float((torch.as_tensor(classify(images)) == labels).float().mean())
    print(f"{len(labels)} images in {dt:.3f} s (one network evaluation each); feature-net top-1 {acc:.3f}; "
          f"wrote {args.output}")


if __name__ == "__main__":
    main()
