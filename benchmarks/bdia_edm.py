"""BDIA-EDM against EDM Euler and EDM Heun at equal NFE on the digits teacher.

Every sample is drawn through the one sampling driver (:func:`diffkit.sampling.plan_sampling`, as
``diffkit sample`` / ``diffkit fid`` do): sample k's noise comes from (seed, k), scaled to the VP
prior √(σ₀²+1); labels k % 10; guidance 1; Karras grid (ρ = 7) on the trained σ range; float64
state; images clamped to [-1, 1]. Euler-type samplers take NFE steps, Heun-type (NFE+1)/2.

Part 1, integration error: RMS pixel difference (mean over samples) between a sampler's images and
an EDM Heun solution with ``--ref-steps`` steps from the same noise.
* Calibration set (sample indices 0..n-1 of ``--sweep-seed``): EDM Euler, EDM Heun and the whole
  sweep BDIA-{Euler, Heun} × γ ∈ ``--gammas`` × γ mode {vp, constant}. Per forward increment and
  NFE, the (γ, mode) with the lowest calibration error is *chosen*.
* Scoring set (indices n..2n-1 of the same seed: disjoint samples): EDM Euler, EDM Heun, the chosen
  BDIA setting and the shipped default (the sampler function's own γ and mode) -- the reported figures.
Part 2, FID-digits (n = ``--n-fid`` per seed × ``--seeds``, indices 0..n-1; mean ± std over seeds)
and feature-net top-1 at ``--fid-nfe``: EDM Euler, EDM Heun, BDIA-Euler chosen and default.
Every ratio is computed here from unrounded values ("A / B": A's error or FID over B's).

    diffkit bench bdia_edm                     # full size -> benchmarks/results/bdia_edm.json
    diffkit bench bdia_edm --quick --json X    # CI size (~15 s), same schema
    # the same full run in two processes sharing a cache (then the first command merges):
    diffkit bench bdia_edm --cache DIR --only calibration &  diffkit bench bdia_edm --cache DIR --only fixed
    diffkit bench bdia_edm --cache DIR --only chosen     # after calibration, beside "fixed"

Full size measured on the shared 2-core x86_64 machine, one torch thread: see ``cpu_s`` in the JSON
(about 10 CPU-min: 582 CPU-s of units when measured, plus a few model loads).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import time
from pathlib import Path

import torch

from diffkit.atomic import write_text_atomically
from diffkit.data import digits_tensors
from diffkit.metrics.digits import fid_digits, load_reference_stats, mean_std, top1_accuracy
from diffkit.models.digits_features import load_feature_net
from diffkit.pipelines import load_pipeline
from diffkit.registry import get_sampler
from diffkit.sampling import plan_sampling

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import default_json, write_results  # noqa: E402

BASELINES = ("edm-euler", "edm-heun")
BDIA = ("bdia-euler", "bdia-heun")
MODES = ("vp", "constant")
PARTS = ("all", "calibration", "fixed", "chosen")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="CI size: NFE 9, γ 0.25/0.5, 10 + 10 sweep samples, FID n=100 × 1 seed at NFE 9")
    p.add_argument("--model", default="digits-unet", help="model folder or asset name (a diffkit pipeline)")
    p.add_argument("--nfe", default=None, help="NFE budgets of the integration-error part (9,17,35)")
    p.add_argument("--gammas", default=None, help="γ values of the calibration sweep (0.1,0.25,0.5,0.75,1.0)")
    p.add_argument("--n-sweep", type=int, default=None, help="calibration samples = scoring samples (128)")
    p.add_argument("--sweep-seed", type=int, default=100, help="noise seed of the calibration/scoring sets")
    p.add_argument("--ref-steps", type=int, default=None, help="steps of the EDM Heun reference (250)")
    p.add_argument("--fid-nfe", default=None, help="NFE budgets of the FID part (9,17; '' = none)")
    p.add_argument("--n-fid", type=int, default=None, help="samples per FID evaluation (1000)")
    p.add_argument("--seeds", default=None, help="comma-separated FID seeds (0,1,2)")
    p.add_argument("--cache", default=None, help="folder keeping finished units (resume; parallel --only parts)")
    p.add_argument("--only", default="all", choices=PARTS,
                   help="calibration: only the calibration sweep; fixed: only the units that need no choice "
                        "(scoring and FID of the baselines and defaults); chosen: only the chosen settings' "
                        "units (after calibration). These fill --cache and write no JSON")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="results file (default benchmarks/results/bdia_edm.json; "
                   "--quick writes only to an explicit --json)")
    a = p.parse_args(argv)
    q = a.quick
    a.nfe = [int(v) for v in (a.nfe or ("9" if q else "9,17,35")).split(",")]
    a.fid_nfe = [int(v) for v in (("9" if q else "9,17") if a.fid_nfe is None else a.fid_nfe).split(",") if v]
    a.gammas = [float(v) for v in (a.gammas or ("0.25,0.5" if q else "0.1,0.25,0.5,0.75,1.0")).split(",")]
    a.n_sweep = a.n_sweep or (10 if q else 128)
    a.ref_steps = a.ref_steps or (50 if q else 250)
    a.n_fid = a.n_fid or (100 if q else 1000)
    a.seeds = [int(v) for v in (a.seeds or ("0" if q else "0,1,2")).split(",")]
    if a.json is None:
        a.json = default_json("bdia_edm", q)
    return a


# ---------------------------------------------------------------------------- settings and units
def default_setting(kind: str) -> tuple[float, str]:
    """The shipped default (γ, γ mode) of a BDIA sampler: its function's own keyword defaults."""
    params = inspect.signature(get_sampler(kind).load()).parameters
    return float(params["gamma"].default), str(params["gamma_mode"].default)


def label(kind, gamma=None, mode=None) -> str:
    return kind if gamma is None else f"{kind} γ={gamma:g} {mode}"


class Units:
    """Finished units of work by key; with ``folder``, each is also a JSON file there (resume, and two
    processes filling one cache). The key carries every setting the value depends on."""

    def __init__(self, folder, settings: dict):
        self.folder = Path(folder) if folder else None
        self.salt = json.dumps(settings, sort_keys=True)
        self.cpu_s = 0.0  # CPU time of every unit, computed now or read from the cache
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, key, ext=".json"):
        return self.folder / (hashlib.sha1((self.salt + key).encode()).hexdigest()[:20] + ext)

    def get(self, key, compute, tensor=False):
        """The value of ``key``: from the cache, else ``compute()`` (a JSON value, or a tensor)."""
        f = self._file(key, ".pt" if tensor else ".json") if self.folder else None
        if f is not None and f.exists():
            rec = torch.load(f) if tensor else json.loads(f.read_text())
        else:
            t0 = time.process_time()
            rec = {"key": key, "value": compute(), "cpu_s": 0.0}
            rec["cpu_s"] = time.process_time() - t0
            if f is not None and tensor:
                torch.save(rec, f.with_suffix(".tmp"))
                f.with_suffix(".tmp").replace(f)
            elif f is not None:
                write_text_atomically(f, json.dumps(rec))
        self.cpu_s += rec["cpu_s"]
        return rec["value"]


def draw(pipe, kind, nfe, idx, seed, gamma=None, mode=None) -> torch.Tensor:
    """Images through the driver: ``kind`` at ``nfe`` (or ``steps`` via nfe=("steps", N))."""
    opts = {} if gamma is None else {"gamma": gamma, "gamma_mode": mode}
    budget = {"steps": nfe[1]} if isinstance(nfe, tuple) else {"nfe": nfe}
    plan = plan_sampling(pipe, kind, options=opts, **budget)
    out = plan.run(n=len(idx), seed=seed, sample_indices=idx, dtype=torch.float64)
    if not isinstance(nfe, tuple) and out.nfe != nfe:
        raise RuntimeError(f"{label(kind, gamma, mode)}: used {out.nfe} NFE, budget {nfe}")
    return out.images


def rmse(a, b) -> float:
    return float(((a.double() - b.double()) ** 2).flatten(1).mean(1).sqrt().mean())


class ErrorSet:
    """Integration errors on one sample set; the reference is computed only when a unit needs it."""

    def __init__(self, name, pipe, units, idx, seed, ref_steps):
        self.name, self.pipe, self.units, self.idx, self.seed, self.ref_steps = name, pipe, units, idx, seed, ref_steps
        self._ref = None

    def ref(self, steps=None):
        """EDM Heun with ``steps`` (default ``ref_steps``) from this set's noise (cached)."""
        steps = steps or self.ref_steps
        if steps == self.ref_steps and self._ref is not None:
            return self._ref
        t0 = time.process_time()
        ref = self.units.get(f"ref|{self.name}|{steps}", lambda: draw(self.pipe, "edm-heun", ("steps", steps),
                                                                      self.idx, self.seed), tensor=True)
        print(f"  [{self.name}] reference: EDM Heun {steps} steps, {time.process_time() - t0:.0f} CPU-s", flush=True)
        if steps == self.ref_steps:
            self._ref = ref
        return ref

    def ref_check(self) -> float:
        """The reference's own error, estimated by the RMS difference to EDM Heun with half its steps."""
        return self.units.get(f"refcheck|{self.name}", lambda: rmse(self.ref(self.ref_steps // 2), self.ref()))

    def error(self, kind, nfe, gamma=None, mode=None) -> float:
        key = f"error|{self.name}|{label(kind, gamma, mode)}|{nfe}"
        return self.units.get(key, lambda: rmse(draw(self.pipe, kind, nfe, self.idx, self.seed, gamma, mode),
                                                self.ref()))


# ---------------------------------------------------------------------------- part 1
def calibrate(args, cal: ErrorSet) -> tuple[dict, dict]:
    """The sweep on the calibration set, and the chosen (γ, mode) per BDIA kind and NFE."""
    rows = {k: {str(n): cal.error(k, n) for n in args.nfe} for k in BASELINES}
    for kind in BDIA:
        for m in MODES:
            for g in args.gammas:
                rows[label(kind, g, m)] = {str(n): cal.error(kind, n, g, m) for n in args.nfe}
    chosen = {}
    for kind in BDIA:
        chosen[kind] = {}
        for n in args.nfe:
            err, g, m = min((rows[label(kind, g, m)][str(n)], g, m) for m in MODES for g in args.gammas)
            chosen[kind][str(n)] = {"gamma": g, "gamma_mode": m, "calibration_error": err}
    return rows, chosen


def score(args, sc: ErrorSet, chosen) -> tuple[dict, dict]:
    """Errors on the scoring set, and every ratio "A / B" of two of them (A's error over B's).
    ``chosen`` None: only the units that need no choice (baselines, defaults)."""
    out, ratios = {}, {}
    for n in args.nfe:
        row = {k: sc.error(k, n) for k in BASELINES}
        for kind in BDIA:
            if chosen is not None:
                c = chosen[kind][str(n)]
                row[f"{kind} chosen"] = sc.error(kind, n, c["gamma"], c["gamma_mode"])
            row[f"{kind} default"] = sc.error(kind, n, *default_setting(kind))
        out[str(n)] = row
        ratios[str(n)] = {f"{b} / {k}": row[b] / row[k] for k in row if k.startswith("bdia") for b in BASELINES}
    return out, ratios


# ---------------------------------------------------------------------------- part 2
def fid_arms(args, chosen, nfe, which) -> list[tuple[str, str, float | None, str | None]]:
    """(name, kind, γ, mode) of the FID arms at ``nfe``: fixed (no sweep needed) and/or chosen."""
    arms = [] if which == "chosen" else [(k, k, None, None) for k in BASELINES] + [
        ("bdia-euler default", "bdia-euler", *default_setting("bdia-euler"))]
    if which != "fixed":
        c = chosen["bdia-euler"][str(nfe)]
        arms.append(("bdia-euler chosen", "bdia-euler", c["gamma"], c["gamma_mode"]))
    return arms


def fid_part(args, pipe, units, chosen, which="all") -> tuple[dict, dict]:
    net, ref_stats = load_feature_net("digits-features"), load_reference_stats()
    train_x = digits_tensors("train")[0]
    idx = list(range(args.n_fid))
    labels = torch.tensor([k % 10 for k in idx])  # the driver's label rule
    out, ratios = {}, {}
    for nfe in args.fid_nfe:
        out[str(nfe)] = {}
        for name, kind, g, m in fid_arms(args, chosen, nfe, which):
            fids, accs = [], []
            for seed in args.seeds:
                def one(seed=seed, kind=kind, g=g, m=m):
                    x = draw(pipe, kind, nfe, idx, seed, g, m)
                    return [fid_digits(x, net, ref_stats, reference_images=train_x, kid_subsets=10).fid,
                            top1_accuracy(x, labels, net)]
                f, a = units.get(f"fid|{label(kind, g, m)}|{nfe}|{seed}", one)
                fids.append(f)
                accs.append(a)
            (fm, fs), (am, as_) = mean_std(fids), mean_std(accs)
            out[str(nfe)][name] = {"setting": label(kind, g, m), "fid": fids, "fid_mean": fm, "fid_std": fs,
                                   "acc": accs, "acc_mean": am, "acc_std": as_}
            print(f"  NFE {nfe:>3} {name:<20} {label(kind, g, m):<28} FID {fm:.4f} ± {fs:.4f}  acc {am:.4f}",
                  flush=True)
        row = out[str(nfe)]
        ratios[str(nfe)] = {f"{b} / {k}": row[b]["fid_mean"] / row[k]["fid_mean"]
                            for k in row if k.startswith("bdia") for b in BASELINES if b in row}
    return out, ratios


# ---------------------------------------------------------------------------- report
def print_tables(res):
    nfes = list(next(iter(res["sweep"].values())))
    print("\n### Calibration sweep: RMS error vs the reference (lower is better)\n")
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|" + "---|" * len(nfes))
    for k, v in res["sweep"].items():
        print(f"| {k} | " + " | ".join(f"{v[n]:.4f}" for n in nfes) + " |")
    print("\n### Scoring set (disjoint samples): chosen = best on calibration\n")
    rows = list(res["score"][nfes[0]])
    print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|" + "---|" * len(nfes))
    for r in rows:
        cells = []
        for n in nfes:
            c = res["chosen"].get(r.split()[0], {}).get(n) if r.endswith("chosen") else None
            cells.append(f"{res['score'][n][r]:.4f}" + (f" (γ={c['gamma']:g} {c['gamma_mode']})" if c else ""))
        print(f"| {r} | " + " | ".join(cells) + " |")
    for n, rat in res["error_ratios"].items():
        print(f"  NFE {n}: " + ", ".join(f"{k} = {v:.2f}" for k, v in rat.items() if "bdia-euler" in k))
    if res.get("fid"):
        print("\n### FID-digits (mean ± std over seeds), top-1\n")
        print("| NFE | arm | setting | FID | top-1 |\n|---|---|---|---|---|")
        for n, arms in res["fid"].items():
            for name, v in arms.items():
                print(f"| {n} | {name} | {v['setting']} | {v['fid_mean']:.4f} ± {v['fid_std']:.4f} | "
                      f"{v['acc_mean']:.4f} |")
        for n, rat in res["fid_ratios"].items():
            print(f"  NFE {n}: " + ", ".join(f"{k} = {v:.2f}" for k, v in rat.items()))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.process_time()
    pipe = load_pipeline(args.model)
    settings = {"model": args.model, "n_sweep": args.n_sweep, "sweep_seed": args.sweep_seed,
                "ref_steps": args.ref_steps, "n_fid": args.n_fid}
    units = Units(args.cache, settings)
    n = args.n_sweep
    cal = ErrorSet("calibration", pipe, units, list(range(n)), args.sweep_seed, args.ref_steps)
    sc = ErrorSet("score", pipe, units, list(range(n, 2 * n)), args.sweep_seed, args.ref_steps)
    print(f"model {args.model}; NFE {args.nfe}; γ {args.gammas}; calibration/scoring {n} + {n} samples "
          f"(seed {args.sweep_seed}); reference EDM Heun {args.ref_steps} steps", flush=True)
    with torch.no_grad():
        if args.only == "fixed":
            score(args, sc, None)
            if args.fid_nfe:
                fid_part(args, pipe, units, None, which="fixed")
            print(f"fixed units done, {time.process_time() - t_all:.0f} CPU-s")
            return None
        sweep, chosen = calibrate(args, cal)
        ref_check = cal.ref_check()
        if args.only == "calibration":
            print(f"calibration done, {time.process_time() - t_all:.0f} CPU-s")
            return None
        if args.only == "chosen":
            for n in args.nfe:
                for kind in BDIA:
                    sc.error(kind, n, chosen[kind][str(n)]["gamma"], chosen[kind][str(n)]["gamma_mode"])
            if args.fid_nfe:
                fid_part(args, pipe, units, chosen, which="chosen")
            print(f"chosen units done, {time.process_time() - t_all:.0f} CPU-s")
            return None
        scored, err_ratios = score(args, sc, chosen)
        fid, fid_ratios = fid_part(args, pipe, units, chosen) if args.fid_nfe else ({}, {})
    defaults = {k: dict(zip(("gamma", "gamma_mode"), default_setting(k))) for k in BDIA}
    res = {
        "model": args.model,
        "settings": {"nfe": args.nfe, "gammas": args.gammas, "modes": list(MODES), "n_calibration": n,
                     "n_score": n, "sweep_seed": args.sweep_seed, "calibration_indices": [0, n - 1],
                     "score_indices": [n, 2 * n - 1], "ref_steps": args.ref_steps, "fid_nfe": args.fid_nfe,
                     "n_fid": args.n_fid, "fid_seeds": args.seeds, "guidance": 1.0, "defaults": defaults},
        "reference_error": ref_check, "sweep": sweep, "chosen": chosen,
        "score": scored, "error_ratios": err_ratios, "fid": fid, "fid_ratios": fid_ratios,
        "checks": {f"bdia-euler {w} beats {b} at {args.nfe[0]} NFE":
                   scored[str(args.nfe[0])][f"bdia-euler {w}"] < scored[str(args.nfe[0])][b]
                   for w in ("chosen", "default") for b in BASELINES},
    }
    print_tables(res)
    res["cpu_s"] = units.cpu_s  # all units, whichever process computed them (model loads not counted)
    print(f"\ntotal {res['cpu_s']:.0f} CPU-s in units ({time.process_time() - t_all:.0f} CPU-s in this process)")
    if args.json:
        print(f"wrote {write_results(res, args.json, script=__file__, argv=argv)}")
    return res


if __name__ == "__main__":
    main()
