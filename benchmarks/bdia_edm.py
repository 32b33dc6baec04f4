"""BDIA-EDM benchmark: a γ sweep by integration error, then FID-digits at equal NFE.

Part 1 (γ sweep): on ``--n-sweep`` samples (one seed, guidance 1), every sampler starts
from the same noise; its final sample is scored by the RMS difference (pixels in [-1, 1],
mean over samples) to a ``--ref-steps``-step EDM Heun reference trajectory from that noise
(computed once). Samplers: EDM Euler, EDM Heun and BDIA-{Euler, Heun} × γ ∈ ``--gammas`` ×
γ mode {vp, constant}, at NFE ∈ ``--nfe`` (Euler-type samplers take NFE steps, Heun-type
(NFE+1)/2, whose last step onto σ = 0 has no correction). All use the Karras grid (ρ = 7)
on the model's trained σ range and a float64 state.

Part 2 (FID-digits): EDM Euler, EDM Heun and, per forward increment, the BDIA setting
(γ, mode) with the lowest sweep error at each NFE, on ``--n-fid`` class-balanced samples ×
``--seeds`` (sample k's noise from (seed, k)), scored by FID-digits and the digits
classifier's top-1 accuracy (mean ± std over seeds). The best γ is chosen on integration
error and reported with integration error -- the FID comparison is the held-out check.

    python benchmarks/bdia_edm.py            # full: ~1.6M sample-evaluations of the digits teacher
    python benchmarks/bdia_edm.py --quick    # seconds; CI
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from diffkit.atomic import write_json_atomically
from diffkit.registry import get_sampler


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    p.add_argument("--model", default="digits-unet", help="model folder/asset; 'tiny' = random tiny UNet")
    p.add_argument("--nfe", default=None, help="comma-separated NFE budgets (default 9,17,35)")
    p.add_argument("--gammas", default=None, help="comma-separated γ values (default 0.1,0.25,0.5,0.75,1.0)")
    p.add_argument("--n-sweep", type=int, default=None, help="samples in the γ sweep (default 256)")
    p.add_argument("--ref-steps", type=int, default=None, help="steps of the Heun reference (default 1000)")
    p.add_argument("--n-fid", type=int, default=None, help="samples per FID evaluation (default 1000)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds for FID (default 0,1,2)")
    p.add_argument("--fid-ref-steps", type=int, default=None,
                   help="also score EDM Heun with this many steps (a near-exact ODE solution; default 100, 0: off)")
    p.add_argument("--skip-fid", action="store_true", help="only the γ sweep")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    a = p.parse_args(argv)
    q = a.quick
    a.nfe = [int(v) for v in (a.nfe or ("9" if q else "9,17,35")).split(",")]
    a.gammas = [float(v) for v in (a.gammas or ("0.5,1.0" if q else "0.1,0.25,0.5,0.75,1.0")).split(",")]
    a.n_sweep = a.n_sweep or (20 if q else 256)
    a.ref_steps = a.ref_steps or (100 if q else 1000)
    a.n_fid = a.n_fid or (100 if q else 1000)
    a.seeds = [int(v) for v in (a.seeds or ("0" if q else "0,1,2")).split(",")]
    a.fid_ref_steps = (0 if q else 100) if a.fid_ref_steps is None else a.fid_ref_steps
    return a


def load_model(name):
    """(unet, Denoiser, description); 'tiny' or a missing digits teacher -> random tiny UNet."""
    from diffkit.assets import AssetError
    from diffkit.denoisers import Denoiser, EpsModel
    from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d

    if name != "tiny":
        from diffkit.pipelines import load_pipeline

        try:
            pipe = load_pipeline(name)
            return pipe.unet.eval(), Denoiser(EpsModel(pipe.unet, pipe.scheduler.config)), name
        except AssetError as e:
            print(f"[{e}] -> using a random tiny UNet (integration error only)")
    unet = tiny_unet2d(num_classes=10)
    return unet, Denoiser(EpsModel(unet, tiny_ddim_scheduler())), "random tiny UNet"


def steps_for(kind: str, nfe: int) -> int:
    """The registry entry's budget rule (Euler-type: NFE steps; Heun-type: 2N - 1 = NFE)."""
    return get_sampler(kind).steps_for(nfe)


def run_sampler(D, kind, x, nfe, extra, gamma=None, mode=None):
    from diffkit.samplers import edm

    sig = edm.model_sigmas(D, steps_for(kind, nfe))
    fn = get_sampler(kind).load()
    kw = {} if gamma is None else {"gamma": gamma, "gamma_mode": mode}
    out, used = fn(D, x, sig, extra, disable=True, dtype=torch.float64, return_nfe=True, **kw)
    assert used == nfe, (kind, nfe, used)
    return out


def noise(D, shape, n, seed):
    from diffkit.seeding import randn_for_indices

    return randn_for_indices(shape, range(n), seed, dtype=torch.float64) * D.sigma_max


def rmse(a, b) -> float:
    return float(((a - b) ** 2).flatten(1).mean(1).sqrt().mean())


def label(kind, gamma=None, mode=None):
    return kind if gamma is None else f"{kind} γ={gamma:g} {mode}"


def sweep(args, unet, D):
    from diffkit.conditioning import class_guidance
    from diffkit.samplers import edm

    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    labels = torch.arange(args.n_sweep) % 10
    extra = {"guidance": class_guidance(unet, labels, 1.0)}
    x = noise(D, shape, args.n_sweep, seed=0)
    t0 = time.process_time()
    ref = edm.sample_heun(D, x, edm.model_sigmas(D, args.ref_steps), extra, disable=True, dtype=torch.float64)
    print(f"reference: EDM Heun, {args.ref_steps} steps ({2 * args.ref_steps - 1} NFE), {args.n_sweep} samples, "
          f"{time.process_time() - t0:.0f} CPU-s")
    rows = {}
    configs = [("edm-euler", None, None), ("edm-heun", None, None)] + [
        (k, g, m) for k in ("bdia-euler", "bdia-heun") for m in ("vp", "constant") for g in args.gammas]
    for kind, g, m in configs:
        rows[label(kind, g, m)] = {nfe: rmse(run_sampler(D, kind, x, nfe, extra, g, m), ref) for nfe in args.nfe}
    print(f"sweep done, {time.process_time() - t0:.0f} CPU-s in all")
    return rows


def best_settings(rows, nfes):
    """Per forward increment and NFE: the (γ, mode) with the lowest integration error."""
    best = {}
    for kind in ("bdia-euler", "bdia-heun"):
        for nfe in nfes:
            cands = [(v[nfe], k) for k, v in rows.items() if k.startswith(kind + " ")]
            err, key = min(cands)
            _, g, m = key.split(" ")
            best[(kind, nfe)] = (float(g.split("=")[1]), m, err)
    return best


def print_sweep(rows, nfes):
    print("\n### γ sweep: RMS error vs the Heun reference (lower is better)\n")
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{v[n]:.4f}" for n in nfes) + " |")


def fid_part(args, unet, D, best):
    from diffkit.conditioning import class_guidance
    from diffkit.metrics.digits import balanced_labels, fid_digits, load_reference_stats, mean_std, top1_accuracy
    from diffkit.models.digits_features import load_feature_net

    net, ref_stats = load_feature_net("digits-features"), load_reference_stats()
    from diffkit.data import digits_tensors

    train_x = digits_tensors("train")[0]
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    labels = balanced_labels(args.n_fid)
    extra = {"guidance": class_guidance(unet, labels, 1.0)}
    results = {}
    plan = [(nfe, [("edm-euler", None, None), ("edm-heun", None, None)]
             + [(k, best[(k, nfe)][0], best[(k, nfe)][1]) for k in ("bdia-euler", "bdia-heun")]) for nfe in args.nfe]
    if args.fid_ref_steps:  # the near-exact ODE solution: where the samplers converge to
        plan.append((2 * args.fid_ref_steps - 1, [("edm-heun", None, None)]))
    for nfe, configs in plan:
        for kind, g, m in configs:
            fids, accs = [], []
            for seed in args.seeds:
                x = run_sampler(D, kind, noise(D, shape, args.n_fid, seed), nfe, extra, g, m).float().clamp(-1, 1)
                fids.append(fid_digits(x, net, ref_stats, reference_images=train_x, kid_subsets=10).fid)
                accs.append(top1_accuracy(x, labels, net))
            results[(label(kind, g, m), nfe)] = (mean_std(fids), mean_std(accs))
            (fm, fs), (am, as_) = results[(label(kind, g, m), nfe)]
            print(f"  NFE {nfe:>3} {label(kind, g, m):<28} FID {fm:.3f} ± {fs:.3f}  acc {am:.4f} ± {as_:.4f}",
                  flush=True)
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.process_time()
    unet, D, what = load_model(args.model)
    print(f"model: {what}; trained σ range [{D.sigma_min:.4g}, {D.sigma_max:.4g}]; NFE {args.nfe}; "
          f"γ {args.gammas}; {args.n_sweep} sweep samples")
    with torch.no_grad():
        rows = sweep(args, unet, D)
    print_sweep(rows, args.nfe)
    best = best_settings(rows, args.nfe)
    print("\nBest BDIA setting per NFE (chosen on this same integration-error metric):")
    for (kind, nfe), (g, m, err) in best.items():
        heun = rows["edm-heun"][nfe]
        print(f"  {kind:<10} NFE {nfe:>3}: γ={g:g} {m:<8} error {err:.4f} vs EDM Heun {heun:.4f} "
              f"({heun / err:.2f}× {'better' if err < heun else 'worse'})")
    out = {"model": what, "sweep": {k: {str(n): e for n, e in v.items()} for k, v in rows.items()},
           "best": {f"{k} {n}": list(v) for (k, n), v in best.items()}}
    if not args.skip_fid:
        if what == "random tiny UNet":
            print("\nFID part skipped: it needs the digits teacher.")
        else:
            try:
                print(f"\n### FID-digits, guidance 1, n = {args.n_fid}, seeds {args.seeds}\n")
                with torch.no_grad():
                    fid = fid_part(args, unet, D, best)
                out["fid"] = {f"{k} | {n}": {"fid": f, "acc": a} for (k, n), (f, a) in fid.items()}
                print("\n| sampler | NFE | FID-digits | accuracy |\n|---|---|---|---|")
                for (k, n), ((fm, fs), (am, as_)) in fid.items():
                    print(f"| {k} | {n} | {fm:.3f} ± {fs:.3f} | {am:.4f} ± {as_:.4f} |")
            except (ImportError, FileNotFoundError) as e:
                print(f"\nFID part skipped: FID-digits not available ({e}).")
    print(f"\ntotal {time.process_time() - t_all:.0f} CPU-s")
    if args.json:
        write_json_atomically(args.json, out)
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
