"""Gauge freedom, conservativity and intrinsic dimension, on exact scores and (optionally) a digits UNet.

    python examples/gauge_analysis.py                      # synthetic fixtures only (seconds)
    python examples/gauge_analysis.py --digits --quick     # + the reduced digits report
    python examples/gauge_analysis.py --digits --model assets/digits-unet --output analysis-output

Part 1: Gaussian data on a 4-dim subspace of R^20 (VE process). Adding a gauge field (I + aA)∇log p
leaves probability-flow samples unchanged although the field is far from conservative; a rotation
of the same size and the conservative 1.5x score both break sampling. The intrinsic dimension from
the score stays 4 (log gap), but the estimated tangent space tilts with a.
Part 2: circle / 2-sphere in R^10: all three score-based ID estimators.
"""

from __future__ import annotations

import argparse
import math

import torch

from diffkit.analysis import (LinearGaussianManifold, SphereManifold, VEProcess, asymmetry, flow_jacobian, gauge_field,
                              jacobian_id, log_sigma_grid, nb_id, principal_angles, probability_flow,
                              random_antisymmetric, rotation_field, scaled_field)


def gauge_demo(n: int, steps: int):
    D, d = 20, 4
    proc = VEProcess(sigma_min=1e-3, sigma_max=5.0)
    data = LinearGaussianManifold(D, d, seed=0)
    score = data.score_fn(proc)  # exact ∇log p_t (VE coordinates: x_t = x0 + σ·ε)
    A = random_antisymmetric(D, torch.Generator().manual_seed(0))
    t1, t0 = proc.t_max, proc.t_at_std(0.05)
    C = data.cov(proc, t0)
    floor = math.sqrt(((C ** 2).sum() + torch.trace(C) ** 2) / n) / C.norm()
    x1 = data.sample_t(n, proc, t1, torch.Generator().manual_seed(1))
    grid = log_sigma_grid(proc, steps, t1, t0)
    x_probe = data.sample_t(4, proc, t0, torch.Generator().manual_seed(2))
    x0 = data.sample(4, torch.Generator().manual_seed(3))
    print(f"Part 1: N(0, UΛUᵀ), d={d} in R^{D}, PF-ODE ({steps} Heun steps) to σ=0.05, {n} samples "
          f"(Monte Carlo floor {float(floor):.3f})")
    print(f"{'field':<22} {'NAsym':>7} {'cov error':>10} {'NB ID':>6} {'tangent tilt':>13}")
    fields = [("exact score", score), ("gauge a=1", gauge_field(score, A)), ("gauge a=3", gauge_field(score, 3 * A)),
              ("rotation Kx/σ²", rotation_field(score, A, proc)), ("1.5 × score", scaled_field(score, 1.5))]
    for name, f in fields:
        x = probability_flow(f, proc, x1, grid)
        err = float(((x.T @ x / n) - C).norm() / C.norm())
        nasym = float(asymmetry(f, x_probe, t0).nasym.mean())
        nb = nb_id(f, proc, x0, proc.t_at_std(1e-2), generator=torch.Generator().manual_seed(4))
        tilt = max(math.degrees(float(principal_angles(nb.tangent_basis(b, d), data.U).max())) for b in range(4))
        print(f"{name:<22} {nasym:7.3f} {err:10.3f} {int(nb.id.median()):6d} {tilt:12.1f}°")


def sphere_demo():
    print("\nPart 2: spheres in R^10 (exact scores, σ_t0 = 0.01)")
    print(f"{'manifold':<10} {'NB (log)':>9} {'NB (abs)':>9} {'Jacobian':>9} {'flow':>5}")
    proc = VEProcess(sigma_min=1e-3, sigma_max=5.0)
    for d in (1, 2):
        sp = SphereManifold(10, d, seed=3)
        s = sp.score_fn(proc)
        t0 = proc.t_at_std(1e-2)
        x0 = sp.sample(4, torch.Generator().manual_seed(0))
        nb = nb_id(s, proc, x0, t0, generator=torch.Generator().manual_seed(1))
        nba = nb_id(s, proc, x0, t0, gap="abs", generator=torch.Generator().manual_seed(1))
        jid = jacobian_id(s, proc, x0, t0)
        x1 = 5.0 * torch.randn(2, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        fj = flow_jacobian(s, proc, x1, log_sigma_grid(proc, 40, proc.t_max, t0))
        print(f"{'S^' + str(d):<10} {nb.id.tolist()!s:>9} {nba.id.tolist()!s:>9} {jid.id.tolist()!s:>9} "
              f"{fj.id.tolist()!s:>5}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4000, help="samples for the probability-flow runs")
    p.add_argument("--steps", type=int, default=100, help="Heun steps of the probability flow")
    p.add_argument("--digits", action="store_true", help="also write the digits report")
    p.add_argument("--model", default=None, help="digits model folder (default: the shipped digits-unet)")
    p.add_argument("--output", default="analysis-output")
    p.add_argument("--quick", action="store_true", help="reduced digits report")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    gauge_demo(args.n, args.steps)
    sphere_demo()
    if args.digits:
        from diffkit.analysis.report import AnalysisConfig, analyze_digits

        analyze_digits(args.model, args.output, AnalysisConfig.quick() if args.quick else AnalysisConfig())


if __name__ == "__main__":
    main()
