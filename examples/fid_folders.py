"""FID between two folders of PNGs with all three backends, offline, plus cached reference stats.

Writes two small image sets as PNG folders (stand-ins for "real" and "generated"), then
measures them with clean-fid's and torchmetrics' own loaders and with diffkit's, using one
small feature network (use features="digits" for FID-digits, or features="inception" with
your own Inception weights file; see diffkit.metrics.features). Then caches the reference
statistics once and reuses them.

    python examples/fid_folders.py --n 500 --output fid-example
"""

import argparse
import os

import torch
from torch import nn

from diffkit.metrics import ModuleFeatures, compute_fid, compute_kid, compute_stats, save_stats
from diffkit.metrics.folders import save_image_folder


def feature_net(seed: int = 0) -> ModuleFeatures:
    """Any nn.Module mapping images to (N, d) features works. A bare module sees float images
    in [0, 255] (clean-fid's convention); ModuleFeatures maps them to the range it expects."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(16 * 4 * 4, 32)).eval()
    return ModuleFeatures(net, name="blob-cnn", input_range=(-1.0, 1.0))


def blobs(n: int, seed: int, width: float) -> torch.Tensor:
    """8x8 grey images in [-1, 1]: one Gaussian blob each, at a random place."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, 1, 1, generator=g) * 6 + 1
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    d2 = (yy - centre[:, 0:1]) ** 2 + (xx - centre[:, 1:2]) ** 2
    return (2 * torch.exp(-d2 / (2 * width ** 2)) - 1).reshape(n, 1, 8, 8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--output", default="fid-example")
    args = ap.parse_args()
    real, fake = os.path.join(args.output, "real"), os.path.join(args.output, "generated")
    save_image_folder(blobs(args.n, 0, 1.2), real)
    save_image_folder(blobs(args.n, 1, 1.0), fake)
    net = feature_net()
    for backend in ("clean-fid", "torchmetrics", "diffkit"):
        print(compute_fid(fake, real, backend=backend, features=net))
    print(compute_kid(fake, real, features=net, subset_size=min(100, args.n)))
    # cache the reference once (mu, sigma, n, protocol; features for KID), reuse it later
    stats = save_stats(compute_stats(real, features=net), os.path.join(args.output, "real_stats.npz"),
                       include_features=True)
    print("from cached stats:", compute_fid(fake, stats, features=net))


if __name__ == "__main__":
    main()
