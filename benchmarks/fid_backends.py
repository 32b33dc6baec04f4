"""Do the three FID backends agree? clean-fid, torchmetrics and diffkit on 2,048-d features.

A fixed random network (seeded: conv 3→64, tanh, then a linear map to 2,048 features, tanh) plays
Inception's part: both sets of n images go through each backend's own image path
(:mod:`diffkit.metrics.fid_backends`: clean-fid's resizer loop and ``frechet_distance`` with
scipy's ``sqrtm``, torchmetrics' ``update()`` on uint8 batches with its float64 sums and its
``compute()``, diffkit's loader and symmetric-eigenvalue Fréchet distance), with the same
in-memory images: "real" = seeded smooth random images, "generated" = the same kind with another
seed, lower contrast and a colour shift. The figure is the largest relative difference of the FID
between any two backends, max |FID_a − FID_b| / FID_diffkit.

    diffkit bench fid_backends                  # n = 10,000 per side -> benchmarks/results/fid_backends.json
    python benchmarks/fid_backends.py --quick   # CI size, 64-d features (--json PATH to keep it)

Full size: about 53 s of CPU (user + system; 5.4 min of wall time under a load of ~14 from other jobs)
on one thread of the 2-core x86_64 machine.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from diffkit.metrics import ProtocolWarning, compute_fid  # noqa: E402
from diffkit.metrics.fid_backends import BACKENDS  # noqa: E402


def random_network(dim: int, size: int, seed: int = 0) -> nn.Module:
    """The fixed feature network: its weights depend on ``seed`` only."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(64 * (size // 2) ** 2, dim), nn.Tanh()).eval()


def smooth_images(n: int, size: int, seed: int, contrast: float = 1.0, shift=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """n images in [-1, 1]: seeded 4x4 noise upsampled bilinearly (plus pixel noise), then contrast and shift."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    x = 0.5 * low + 0.15 * torch.randn(n, 3, size, size, generator=g)
    x = contrast * x + torch.tensor(shift).view(1, 3, 1, 1)
    return x.clamp(-1, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI size: n = 600, 64-d features")
    p.add_argument("--n", type=int, default=None, help="images per side (default 10,000; quick 600)")
    p.add_argument("--dim", type=int, default=None, help="feature dimension (default 2,048; quick 64)")
    p.add_argument("--size", type=int, default=16, help="image size (default 16)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/fid_backends.json for a "
                   "full run through `diffkit bench fid_backends`; none for --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (600 if args.quick else 10_000)
    dim = args.dim or (64 if args.quick else 2048)
    net = random_network(dim, args.size)
    real = smooth_images(n, args.size, seed=1)
    fake = smooth_images(n, args.size, seed=2, contrast=0.8, shift=(0.1, 0.0, -0.05))
    print(f"# FID backends on {n} vs {n} images ({args.size}x{args.size} RGB), fixed random network -> {dim}-d")
    rows, vals = [], {}
    for be in BACKENDS:
        t0 = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProtocolWarning)
            r = compute_fid(fake, real, backend=be, features=net, batch_size=args.batch_size)
        cpu = time.process_time() - t0
        vals[be] = r.value
        rows.append({"backend": be, "fid": r.value, "mode": r.mode, "feature_dim": r.feature_dim, "n": r.n,
                     "n_ref": r.n_ref, "cpu_s": cpu})
        print(f"{be:>13}: FID {r.value:.10g}  ({r.mode}; {cpu:.1f} CPU s)")
    ref = vals["diffkit"]
    pairs = {f"{a} vs {b}": abs(vals[a] - vals[b]) / abs(ref) for a, b in itertools.combinations(BACKENDS, 2)}
    max_rel = max(pairs.values())
    for k, v in pairs.items():
        print(f"  {k}: relative difference {v:.2e}")
    print(f"max relative difference across backends: {max_rel:.2e}")
    out = {"quick": args.quick, "n": n, "feature_dim": dim, "image_size": args.size, "network_seed": 0,
           "backends": rows, "pairwise_rel_diff": pairs, "max_rel_diff": max_rel}
    save_results(out, "fid_backends", json_path=args.json, quick=args.quick, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
