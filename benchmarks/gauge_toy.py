"""Gauge freedom on exact scores: the README's closed-form counterexample table, measured.

Gaussian data on a d = 4 subspace of R^20 (VE process, exact ∇log p_t). Each field is integrated by
the probability-flow ODE (Heun, log-σ grid) from σ_max to σ = 0.05; reported per field:

- ``cov_error``: ‖Ĉ − C‖_F / ‖C‖_F of the samples' second moment against the exact covariance at
  σ = 0.05 (the Monte Carlo floor of n samples, ``mc_floor``, is the error of exact samples);
- ``nasym``: NAsym of the field's Jacobian at 4 probe points (0 for a gradient field);
- ``jacobian_rel_error``: the exact score's autograd Jacobian against the closed form −C_t⁻¹;
- ``nb_id`` / ``tilt_deg``: the normal-bundle intrinsic dimension at σ = 0.01 and the largest
  principal angle between its estimated tangent space and the true one (max over 4 points).

Fields: the exact score, gauge fields (I + aA)·s for a ∈ {0.1, 0.3, 1, 3} with a fixed random
antisymmetric A (sampling unchanged in theory), a rotation of the same size (Kx/σ², breaks sampling)
and the conservative 1.5 × score (breaks sampling). Same construction as examples/gauge_analysis.py.

    diffkit bench gauge_toy                   # full size -> benchmarks/results/gauge_toy.json
    python benchmarks/gauge_toy.py --quick    # CI size (--json PATH to keep it)

Full size: 2 CPU-seconds of benchmark (3.6 s of user CPU with the imports, 14 s of wall time under a
load of ~5) on one thread of the 2-core x86_64 machine; --quick: under a second.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from diffkit.analysis import (LinearGaussianManifold, VEProcess, asymmetry, gauge_field, jacobian,  # noqa: E402
                              log_sigma_grid, nb_id, principal_angles, probability_flow, random_antisymmetric,
                              rotation_field, scaled_field)

D, DIM = 20, 4
GAUGE_STRENGTHS = (0.1, 0.3, 1.0, 3.0)
SCALE = 1.5  # the conservative but wrong field: SCALE × the exact score


def run(n: int, steps: int) -> dict:
    proc = VEProcess(sigma_min=1e-3, sigma_max=5.0)
    data = LinearGaussianManifold(D, DIM, seed=0)
    score = data.score_fn(proc)
    A = random_antisymmetric(D, torch.Generator().manual_seed(0))
    t1, t0 = proc.t_max, proc.t_at_std(0.05)
    C = data.cov(proc, t0)
    floor = float(math.sqrt(((C ** 2).sum() + torch.trace(C) ** 2) / n) / C.norm())
    x1 = data.sample_t(n, proc, t1, torch.Generator().manual_seed(1))
    grid = log_sigma_grid(proc, steps, t1, t0)
    x_probe = data.sample_t(4, proc, t0, torch.Generator().manual_seed(2))
    x0 = data.sample(4, torch.Generator().manual_seed(3))
    fields = [("exact", 0.0, score)] + [(f"gauge a={a:g}", a, gauge_field(score, a * A)) for a in GAUGE_STRENGTHS]
    fields += [("rotation", None, rotation_field(score, A, proc)),
               (f"{SCALE} x score", None, scaled_field(score, SCALE))]
    rows = []
    print(f"d = {DIM} in R^{D}, PF-ODE ({steps} Heun steps) to σ = 0.05, {n} samples (Monte Carlo floor {floor:.3f})")
    print("| field | a | NAsym | cov error | NB ID | tangent tilt (°) |\n|---|---|---|---|---|---|")
    for name, a, f in fields:
        x = probability_flow(f, proc, x1, grid)
        err = float(((x.T @ x / n) - C).norm() / C.norm())
        nasym = float(asymmetry(f, x_probe, t0).nasym.mean())
        nb = nb_id(f, proc, x0, proc.t_at_std(1e-2), generator=torch.Generator().manual_seed(4))
        tilt = max(math.degrees(float(principal_angles(nb.tangent_basis(b, DIM), data.U).max())) for b in range(4))
        rows.append(dict(field=name, gauge_strength=a, scale=SCALE if name.endswith("score") else 1.0, nasym=nasym,
                         cov_error=err, nb_id=int(nb.id.median()), tilt_deg=tilt))
        print(f"| {name} | {'' if a is None else f'{a:g}'} | {nasym:.3f} | {err:.3f} | {rows[-1]['nb_id']} | "
              f"{tilt:.1f} |")
    # the exact score's Jacobian against the closed form −C_t⁻¹ (relative Frobenius error, max over 4 points)
    jac = {}
    for s0 in (1e-3, 1e-2):
        t = proc.t_at_std(s0)
        x = data.sample_t(4, proc, t, torch.Generator().manual_seed(5))
        P = data.precision(proc, t)
        jac[f"{s0:g}"] = float(((jacobian(score, x, t) + P).norm(dim=(1, 2)) / P.norm()).max())
    print(f"exact score: Jacobian vs −C_t⁻¹, max relative error {max(jac.values()):.2g} (σ = 1e-3, 1e-2)")
    return dict(D=D, d=DIM, n=n, steps=steps, sigma_end=0.05, mc_floor=floor, fields=rows,
                jacobian_rel_error=jac, jacobian_rel_error_max=max(jac.values()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI size (fewer samples and steps)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/gauge_toy.json for a "
                   "full run through `diffkit bench gauge_toy`; none for --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.process_time()
    result = dict(quick=args.quick, threads=args.threads, **run(500 if args.quick else 4000, 20 if args.quick else 100))
    result["cpu_s"] = time.process_time() - t0
    print(f"\n(total {result['cpu_s']:.0f} CPU s)")
    save_results(result, "gauge_toy", json_path=args.json, quick=args.quick, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
