"""The digits report: conservativity, gauge split and intrinsic dimension of a digits UNet.

``analyze_digits`` runs every tool of :mod:`diffkit.analysis` on a class-conditional 8×8 digits
UNet2DModel (e.g. ``assets/digits-unet``) and writes ``report.md``, ``results.json`` and PNG plots:

* NAsym of the score Jacobian vs noise level (exact and Hutchinson) and loop curl;
* the conservative part ∇φ fitted by a class-conditional :class:`~.gauge.PotentialMLP`, its
  DSM decomposition and weak gauge residuals on held-out digits;
* normal-bundle singular-value spectra with the chosen gaps, ID per class from the raw
  teacher score and from ∇φ (HP24's applied point), tangent-space angles between them,
  Jacobian-spectrum and flow-Jacobian IDs, and the classical TwoNN / MLE estimates.

Coordinates: the teacher's VP score s(z, t) = -ε(z, t)/std_vp(t) on its own discrete
schedule (:class:`~.score.UNetScore`); noise levels are quoted as σ = std_vp and analysis
times are snapped to integer training timesteps. Per-class fields are the model's
class-conditional scores (guidance scale 1); an unconditional model is analysed with
its single field, grouped by the data's labels.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from diffkit.analysis.circulation import loop_circulation
from diffkit.analysis.gauge import (PotentialMLP, PotentialScore, ScoreBank, _grad_phi, dsm_decomposition,
                                    fit_local_quadratic, fit_potential, gauge_residual, make_bank)
from diffkit.analysis.intrinsic_dim import (flow_jacobian, jacobian_id, mle_id, nb_id, nb_spectrum, principal_angles,
                                            spectral_gap, twonn_id)
from diffkit.analysis.jacobian import asymmetry
from diffkit.analysis.processes import log_sigma_grid, noise
from diffkit.analysis.score import UNetScore, math_attention
from diffkit.assets import AssetError
from diffkit.atomic import atomic_path, write_text_atomically
from diffkit.data import digits_tensors
from diffkit.pipelines import load_pipeline
from diffkit.testing import tiny_unet2d
from diffkit.threads import torch_threads

__all__ = ["AnalysisConfig", "load_digits", "load_model", "analyze_digits"]

FIELD_NAMES = {"raw": "teacher", "loc": "local ∇φ", "phi": "network ∇φ"}


@dataclass
class AnalysisConfig:
    """What the report computes; defaults are the full CPU run (a few minutes), :meth:`quick` the demo's."""

    classes: tuple = tuple(range(10))
    sigma0: float = 0.05  # noise std of the ID estimates (t0 = nearest timestep)
    spectra_sigmas: tuple = (0.02, 0.05, 0.1)  # NB spectra plotted at these σ for spectra_classes
    spectra_classes: tuple = (0, 1, 8)
    points_per_class: int = 5  # held-out digits per class for NB / Jacobian IDs
    n_perturb: Optional[int] = None  # NB perturbations K (default 4·D)
    nasym_sigmas: tuple = (0.02, 0.05, 0.1, 0.2, 0.5, 0.9)
    nasym_points_per_class: int = 1
    hutchinson_probes: int = 8
    loop_points_per_class: int = 1
    potential_sigmas: tuple = (0.035, 0.05, 0.07)  # noise levels the potential network is fitted at
    potential_noise_draws: int = 4  # noisings per training digit
    potential_steps: int = 3000
    potential_hidden: int = 256
    potential_depth: int = 4
    flow_classes: tuple = tuple(range(10))
    flow_sigma1: float = 0.9  # the flow starts from a held-out digit noised to this σ (Heun is unstable for
    flow_steps: int = 12  # log-σ steps > ~0.5 in the stiff normal directions, so the range is kept short)
    flow_cols: Optional[int] = None  # sketch size (None: the full Jacobian; a sketch needs more columns than the ID)
    gap_floor: float = 1e-2  # singular values below gap_floor·s_1 are clamped before the gap search
    mle_k: int = 10
    seed: int = 0
    threads: Optional[int] = 1  # torch CPU threads during the analysis (restored after); None: leave as is.
    # Its ops are small (D = 64): extra threads gain little and cost a lot when the cores are shared.

    @classmethod
    def quick(cls, **overrides) -> "AnalysisConfig":
        cfg = dict(classes=(0, 1, 7), spectra_sigmas=(0.05,), spectra_classes=(0, 1), points_per_class=2,
                   nasym_sigmas=(0.05, 0.2, 0.9), potential_sigmas=(0.035, 0.05, 0.07), potential_noise_draws=1,
                   potential_steps=150, potential_hidden=128, potential_depth=2, flow_classes=(1,), flow_steps=8)
        cfg.update(overrides)
        return cls(**cfg)


# ----------------------------------------------------------------------- inputs
def load_digits():
    """(images (N, 1, 8, 8) in [-1, 1], labels (N,), is_test (N,) bool) from ``diffkit.data``
    (sklearn's embedded digits, fixed class-stratified split)."""
    xtr, ytr = digits_tensors("train")
    xte, yte = digits_tensors("test")
    x = torch.cat([xtr, xte])
    y = torch.cat([ytr, yte])
    is_test = torch.cat([torch.zeros(len(ytr), dtype=torch.bool), torch.ones(len(yte), dtype=torch.bool)])
    return x, y, is_test


def load_model(model=None):
    """(unet, scheduler_config, description) from a pipeline, a folder / asset name, or None
    (the shipped ``digits-unet`` if present, else a tiny random-weight class-conditional UNet)."""
    if model is None:
        try:
            pipe = load_pipeline("digits-unet")
            return pipe.unet.eval(), dict(pipe.scheduler.config), "the shipped digits teacher (assets/digits-unet)"
        except AssetError:
            from diffusers import DDIMScheduler

            return (tiny_unet2d(num_classes=10), dict(DDIMScheduler().config),
                    "a tiny random-weight UNet (assets/digits-unet not available): numbers are not meaningful")
    if hasattr(model, "unet") and hasattr(model, "scheduler"):
        return model.unet.eval(), dict(model.scheduler.config), type(model).__name__
    pipe = load_pipeline(model)
    return pipe.unet.eval(), dict(pipe.scheduler.config), str(model)


def _check_model(unet):
    cfg = unet.config
    if (cfg.in_channels, cfg.out_channels) != (1, 1) or cfg.sample_size not in (8, (8, 8), [8, 8]):
        raise ValueError(f"the digits report needs a 1-channel 8×8 UNet; this one has in_channels={cfg.in_channels}, "
                         f"out_channels={cfg.out_channels}, sample_size={cfg.sample_size}")


# ----------------------------------------------------------------------- helpers
def _savefig(fig, path):
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _fmt(v, digits=3):
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.{digits}g}"
    return str(v)


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def _median(x) -> float:
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    return float(x.median()) if x.numel() else float("nan")


# ----------------------------------------------------------------------- the analysis
def analyze_digits(model=None, output: str = "analysis-output", config: Optional[AnalysisConfig] = None,
                   log: Callable[[str], None] = print) -> dict:
    """Run the analysis and write ``report.md``, ``results.json`` and PNGs into ``output``; return the results."""
    cfg = config or AnalysisConfig()
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {cfg.threads}")
    with torch_threads(cfg.threads):
        return _analyze(model, output, cfg, log)


def _analyze(model, output, cfg, log):
    import matplotlib

    matplotlib.use("Agg")
    t_start = time.perf_counter()
    timings = {}
    unet, sched_cfg, what = load_model(model)
    _check_model(unet)
    for p in unet.parameters():
        p.requires_grad_(False)
    x_all, y_all, is_test = load_digits()
    n_cls = int(getattr(unet.config, "num_class_embeds", 0) or 0) - 1
    conditional = n_cls > 0
    bad = [c for c in cfg.classes if not 0 <= c < 10]
    if bad:
        raise ValueError(f"classes must be digits 0..9, got {bad}")
    D = x_all[0].numel()
    gen = lambda k: torch.Generator().manual_seed(cfg.seed * 1000 + k)  # noqa: E731
    res = {"model": what, "config": asdict(cfg), "conditional": conditional, "D": D}
    scores = {}

    def score(c):
        if c not in scores:
            scores[c] = UNetScore(unet, sched_cfg, class_label=c if conditional else None, math_attention=False)
        return scores[c]

    proc = UNetScore(unet, sched_cfg, class_label=0 if conditional else None, math_attention=False).process

    def t_of(sig):  # nearest integer training timestep, and its σ
        t = float(torch.round(proc.t_at_std(torch.tensor(float(sig), dtype=torch.float64))))
        return t, float(proc.std(torch.tensor(t)))

    t0, sig0 = t_of(cfg.sigma0)
    res["t0"], res["sigma_t0"] = t0, sig0
    test_pts = {c: x_all[is_test & (y_all == c)] for c in range(10)}
    train_pts = {c: x_all[~is_test & (y_all == c)] for c in range(10)}
    K = cfg.n_perturb or 4 * D
    log(f"analysis of {what}: D={D}, t0={t0:g} (σ={sig0:.3g}), K={K}")

    with torch.no_grad(), math_attention(unet):
        # ---------------------------------------------------------- NAsym and loop curl vs σ
        tic = time.perf_counter()
        nas = []
        for i, sig in enumerate(cfg.nasym_sigmas):
            t, s_ = t_of(sig)
            ex, hu, curl = [], [], []
            for c in cfg.classes:
                x0 = test_pts[c][: cfg.nasym_points_per_class].double()
                xt, _ = noise(proc, x0, t, gen(100 + 17 * i + c))
                a = asymmetry(score(c), xt, t)
                h = asymmetry(score(c), xt, t, n_probes=cfg.hutchinson_probes, generator=gen(200 + 17 * i + c))
                ex.append(a.nasym)
                hu.append(h.nasym)
                lc = loop_circulation(score(c), xt[: cfg.loop_points_per_class], t, radius=s_, n_loops=4, n_quad=16,
                                      generator=gen(300 + 17 * i + c))
                # curl relative to the Jacobian's RMS singular value: dimensionless, ~0 if conservative
                curl.append((lc.curl.abs() / (a.jac_fro2[: cfg.loop_points_per_class, None] / D).sqrt()).reshape(-1))
            ex, hu, curl = torch.cat(ex), torch.cat(hu), torch.cat(curl)
            nas.append(dict(sigma=s_, t=t, nasym_mean=float(ex.mean()),
                            nasym_se=float(ex.std() / math.sqrt(len(ex))) if len(ex) > 1 else float("nan"),
                            hutchinson_mean=float(hu.mean()), loop_curl_median=_median(curl), n_points=len(ex)))
        res["nasym"] = nas
        timings["nasym"] = time.perf_counter() - tic
        log(f"  NAsym vs σ: {timings['nasym']:.1f} s")

        # ---------------------------------------------------------- potential fit (conservative part)
        tic = time.perf_counter()
        t_pot = sorted({t_of(s)[0] for s in cfg.potential_sigmas})
        banks, held = [], []
        for c in cfg.classes:
            banks.append(make_bank(score(c), proc, train_pts[c].double(), t_pot, cfg.potential_noise_draws,
                                   gen(400 + c), label=c if conditional else None))
            held.append(make_bank(score(c), proc, test_pts[c].double(), [t0], 2, gen(500 + c),
                                  label=c if conditional else None))
        bank, held = ScoreBank.cat(banks), ScoreBank.cat(held)
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(cfg.seed)
            pot = PotentialMLP(D, proc, cfg.potential_hidden, cfg.potential_depth,
                               num_classes=10 if conditional else None)
        with torch.enable_grad():
            fit = fit_potential(bank, pot, cfg.potential_steps, batch_size=256, lr=2e-3, generator=gen(600))
        dec = dsm_decomposition(held, pot)
        r_h = held.score - _grad_phi(pot, held.x, held.t, held.labels, False)  # per-sample class labels
        gr = gauge_residual(r_h, held.x, n_test=16, generator=gen(700))
        rel_gauge = float((r_h ** 2).sum(1).mean() / (held.score ** 2).sum(1).mean())
        res["potential"] = dict(bank_size=len(bank), times=t_pot, steps=cfg.potential_steps,
                                loss_first=fit.history[0], loss_final=float(torch.tensor(fit.history[-50:]).mean()),
                                dsm_score=dec.dsm_score, dsm_conservative=dec.dsm_conservative,
                                gauge_energy=dec.gauge_energy, cross=dec.cross, gauge_fraction=rel_gauge,
                                gauge_residual_max_abs_z=float(gr.z.abs().max()))
        timings["potential"] = time.perf_counter() - tic
        log(f"  potential fit: {timings['potential']:.1f} s "
            f"(loss {fit.history[0]:.3g} -> {res['potential']['loss_final']:.3g})")

        # ---------------------------------------------------------- ID per class: teacher vs conservative parts
        tic = time.perf_counter()
        per_class, spectra = [], {}
        for c in cfg.classes:
            x0 = test_pts[c][: cfg.points_per_class].double()
            nb_raw = nb_id(score(c), proc, x0, t0, n_perturb=K, generator=gen(800 + c), keep_samples=True)
            phi = PotentialScore(pot, c if conditional else None)
            nb_phi = nb_id(phi, proc, x0, t0, n_perturb=K, generator=gen(800 + c))  # same perturbations
            # local conservative part: L² projection onto quadratic potentials over the NB ball itself
            locs = [fit_local_quadratic(nb_raw.points[b], nb_raw.scores[b]) for b in range(x0.shape[0])]
            sv_loc, vh_loc = nb_spectrum(torch.stack([lq(nb_raw.points[b]) for b, lq in enumerate(locs)]))
            jac_raw, jac_phi = jacobian_id(score(c), proc, x0, t0), jacobian_id(phi, proc, x0, t0)
            jac_loc = torch.stack([torch.linalg.svdvals(lq.M) for lq in locs])
            ids = lambda sv, rule="log": (D - spectral_gap(sv, rule, cfg.gap_floor)).tolist()  # noqa: E731
            row = {"class": c, "nb_raw_log": ids(nb_raw.svals), "nb_raw_abs": ids(nb_raw.svals, "abs"),
                   "nb_loc_log": ids(sv_loc), "nb_loc_abs": ids(sv_loc, "abs"),
                   "nb_phi_log": ids(nb_phi.svals), "nb_phi_abs": ids(nb_phi.svals, "abs"),
                   "jac_raw": ids(jac_raw.svals), "jac_loc": ids(jac_loc), "jac_phi": ids(jac_phi.svals),
                   "local_nasym": [float(((lq.G - lq.G.T) / 2).pow(2).sum() / lq.G.pow(2).sum()) for lq in locs],
                   "local_affine_residual": [lq.residual for lq in locs]}
            ang_loc, ang_phi = [], []
            for b in range(x0.shape[0]):
                k = row["nb_raw_log"][b]
                tb = nb_raw.tangent_basis(b, k)
                ang_loc.append(math.degrees(float(principal_angles(tb, vh_loc[b, D - k:].T).max())))
                ang_phi.append(math.degrees(float(principal_angles(tb, nb_phi.tangent_basis(b, k)).max())))
            row["angle_loc_deg"], row["angle_phi_deg"] = ang_loc, ang_phi
            per_class.append(row)
            if c in cfg.spectra_classes:
                spectra[c] = {sig0: {"raw": nb_raw.svals[0].tolist(), "loc": sv_loc[0].tolist(),
                                     "phi": nb_phi.svals[0].tolist()}}
                for sig in cfg.spectra_sigmas:
                    t, s_ = t_of(sig)
                    if abs(s_ - sig0) < 1e-12:
                        continue
                    nb1 = nb_id(score(c), proc, x0[:1], t, n_perturb=K, generator=gen(900 + c), keep_samples=True)
                    lq = fit_local_quadratic(nb1.points[0], nb1.scores[0])
                    nb_p = nb_id(phi, proc, x0[:1], t, n_perturb=K, generator=gen(900 + c))
                    spectra[c][s_] = {"raw": nb1.svals[0].tolist(), "phi": nb_p.svals[0].tolist(),
                                      "loc": nb_spectrum(lq(nb1.points[0])[None])[0][0].tolist()}
        timings["id"] = time.perf_counter() - tic
        log(f"  NB / Jacobian IDs: {timings['id']:.1f} s")

        # ---------------------------------------------------------- flow Jacobian (raw teacher)
        tic = time.perf_counter()
        flows = {}
        t1, _ = t_of(cfg.flow_sigma1)
        grid = log_sigma_grid(proc, cfg.flow_steps, t1, t0)
        for c in cfg.flow_classes:
            x1, _ = noise(proc, test_pts[c][:1].double(), t1, gen(1000 + c))
            with torch.enable_grad():
                fj = flow_jacobian(score(c), proc, x1, grid, n_cols=cfg.flow_cols, generator=gen(1100 + c))
            flows[c] = dict(id=int(fj.slope_id()[0]), gap_id=int(spectral_gap(fj.svals[-1], "log", cfg.gap_floor)[0]),
                            sigma_ve=fj.sigma_ve.tolist(), svals=fj.svals[:, 0].tolist())
        timings["flow"] = time.perf_counter() - tic
        log(f"  flow Jacobian: {timings['flow']:.1f} s")

    # -------------------------------------------------------------- classical estimators
    tic = time.perf_counter()
    classical = {}
    for c in cfg.classes:
        pts = x_all[y_all == c].double()
        classical[c] = dict(n=len(pts), twonn=twonn_id(pts), mle=mle_id(pts, cfg.mle_k))
    classical["all"] = dict(n=len(x_all), twonn=twonn_id(x_all.double()), mle=mle_id(x_all.double(), cfg.mle_k))
    timings["classical"] = time.perf_counter() - tic
    for row in per_class:
        c = row["class"]
        row["twonn"], row["mle"] = classical[c]["twonn"], classical[c]["mle"]
        row["flow"] = flows[c]["id"] if c in flows else None
    res.update(per_class=per_class, spectra={str(k): {str(s): v for s, v in d.items()} for k, d in spectra.items()},
               flows={str(k): v for k, v in flows.items()}, classical={str(k): v for k, v in classical.items()},
               potential_history=fit.history)
    timings["total"] = time.perf_counter() - t_start
    res["timings_s"] = timings
    _write_outputs(res, output, cfg)
    log(f"  total {timings['total']:.1f} s -> {os.path.join(output, 'report.md')}")
    return res


# ----------------------------------------------------------------------- outputs
def _plots(res, output):
    import matplotlib.pyplot as plt

    files = {}
    D = res["D"]
    # NB spectra with the chosen (log) gap
    spectra = res["spectra"]
    if spectra:
        fig, axes = plt.subplots(1, len(spectra), figsize=(4.2 * len(spectra), 3.4), squeeze=False)
        for ax, (c, by_sigma) in zip(axes[0], spectra.items()):
            for j, (s, d) in enumerate(sorted(by_sigma.items(), key=lambda kv: float(kv[0]))):
                col = f"C{j}"
                for name, ls in (("raw", "-"), ("loc", ":"), ("phi", "--")):
                    sv = torch.tensor(d[name])
                    ax.semilogy(range(1, len(sv) + 1), sv, ls, color=col,
                                label=f"σ={float(s):.3g} {FIELD_NAMES[name]}")
                    k = int(spectral_gap(sv[None], "log", res["config"]["gap_floor"])[0])
                    ax.axvline(k + 0.5, color=col, ls=ls, lw=0.8, alpha=0.6)
            ax.set_title(f"class {c}: NB singular values")
            ax.set_xlabel("index (gap: vertical lines; ID = D - index)")
        axes[0][0].legend(fontsize=7)
        files["spectra"] = "nb_spectra.png"
        _savefig(fig, os.path.join(output, files["spectra"]))
    # NAsym vs σ
    nas = res["nasym"]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sig = [r["sigma"] for r in nas]
    ax.errorbar(sig, [r["nasym_mean"] for r in nas], yerr=[0 if r["nasym_se"] != r["nasym_se"] else r["nasym_se"]
                                                           for r in nas], marker="o", label="exact")
    ax.plot(sig, [r["hutchinson_mean"] for r in nas], "x", label="Hutchinson")
    ax.set_xscale("log")
    ax.set_xlabel("σ (std_vp)")
    ax.set_ylabel("NAsym = ‖skew J‖²/‖J‖²")
    ax.legend()
    files["nasym"] = "nasym_vs_sigma.png"
    _savefig(fig, os.path.join(output, files["nasym"]))
    # ID per class
    rows = res["per_class"]
    keys = [("nb_raw_log", "NB teacher (log gap)"), ("nb_raw_abs", "NB teacher (abs gap)"),
            ("nb_loc_log", "NB local ∇φ (log)"), ("nb_phi_log", "NB network ∇φ (log)"),
            ("jac_raw", "Jacobian teacher"), ("flow", "flow Jacobian"), ("twonn", "TwoNN"), ("mle", "MLE")]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.6))
    w = 0.8 / len(keys)
    for j, (k, lab) in enumerate(keys):
        vals = [(_median(r[k]) if r[k] is not None else float("nan")) for r in rows]
        ax.bar([i + (j - len(keys) / 2 + 0.5) * w for i in range(len(rows))], vals, w, label=lab)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([str(r["class"]) for r in rows])
    ax.set_xlabel("class")
    ax.set_ylabel(f"ID (median over points; D={D})")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    files["id"] = "id_per_class.png"
    _savefig(fig, os.path.join(output, files["id"]))
    # flow-Jacobian singular values
    if res["flows"]:
        c, fl = next(iter(res["flows"].items()))
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        sv = torch.tensor(fl["svals"])
        ax.loglog(fl["sigma_ve"], sv, lw=0.8)
        ax.invert_xaxis()
        ax.set_xlabel("σ_ve = σ/α (integrating →)")
        ax.set_ylabel("singular values of ∂x_t/∂x_t1")
        ax.set_title(f"class {c}: flow Jacobian (ID {fl['id']})")
        files["flow"] = "flow_jacobian.png"
        _savefig(fig, os.path.join(output, files["flow"]))
    # potential fit
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    ax.semilogy(res["potential_history"], lw=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("E σ²‖∇φ - s‖²")
    files["potential"] = "potential_fit.png"
    _savefig(fig, os.path.join(output, files["potential"]))
    return files


def _markdown(res, files) -> str:
    cfg, pot = res["config"], res["potential"]
    L = ["# Gauge / conservativity / intrinsic-dimension report", "",
         f"Model: {res['model']}. Score: VP s(z, t) = -ε(z, t)/std_vp(t) "
         f"({'class-conditional, per class' if res['conditional'] else 'unconditional'}), D = {res['D']}. "
         f"ID estimates at t0 = {res['t0']:g} (σ = {res['sigma_t0']:.3g}), K = {cfg['n_perturb'] or 4 * res['D']} "
         f"perturbations, {cfg['points_per_class']} held-out digits per class. "
         f"Runtime {res['timings_s']['total']:.0f} s on {torch.get_num_threads()} CPU thread(s).", ""]
    L += ["## Conservativity of the teacher", "",
          "NAsym = ‖(J - Jᵀ)/2‖²_F/‖J‖²_F of the score Jacobian at forward-noised held-out digits (0 for a "
          "gradient field), exact (mean ± s.e. over points) and Hutchinson "
          f"({cfg['hutchinson_probes']} Rademacher probes, 2 VJPs each); loop curl = |∮s·dl|/(2πρ²) on circles "
          "of radius ρ = σ in random planes, relative to the Jacobian's RMS singular value.", ""]
    L += _table(["σ", "t", "NAsym exact", "± s.e.", "NAsym Hutchinson", "loop curl (median)"],
                [[r["sigma"], r["t"], r["nasym_mean"], r["nasym_se"], r["hutchinson_mean"], r["loop_curl_median"]]
                 for r in res["nasym"]])
    L += ["", f"![NAsym vs σ]({files['nasym']})", ""]
    L += ["## Conservative part ∇φ and gauge part r = s - ∇φ", "",
          f"A {'class-conditional ' if res['conditional'] else ''}potential network φ(x, t) "
          "was fitted by least squares "
          f"E σ²‖∇φ - s‖² on {pot['bank_size']} forward-noised training digits at t ∈ {pot['times']} "
          f"({pot['steps']} Adam steps; loss {pot['loss_first']:.3g} → {pot['loss_final']:.3g}). "
          "On held-out digits at t0 "
          "(σ²-weighted; DSM(s) = DSM(∇φ) + E‖r‖² + cross exactly, cross → 0 at the exact projection):", ""]
    L += _table(["DSM(s)", "DSM(∇φ)", "E σ²‖r‖²", "cross", "‖r‖²/‖s‖²",
                 "max |z| weak gauge residual (16 ψ)"],
                [[pot["dsm_score"], pot["dsm_conservative"], pot["gauge_energy"], pot["cross"], pot["gauge_fraction"],
                  pot["gauge_residual_max_abs_z"]]])
    L += ["", "A |z| of a few is consistent with E[∇ψ·r] = 0 (a gauge r); large |z| means the fitted φ has not "
          "captured the whole conservative part."]
    if pot["dsm_conservative"] > pot["dsm_score"]:
        L += ["", f"**The network has not reached the projection**: the exact conservative part always has "
              f"DSM(∇φ) ≤ DSM(s) (their difference is E‖r‖² ≥ 0), here {pot['dsm_conservative']:.3g} > "
              f"{pot['dsm_score']:.3g}. Its ‖r‖²/‖s‖² = {pot['gauge_fraction']:.2f} mixes fitting error "
              "with the gauge part: treat the network-∇φ columns below as unconverged; the local ∇φ "
              "columns do not depend on the network."]
    L += ["", f"![potential fit]({files['potential']})", ""]
    L += ["## Intrinsic dimension per class", "",
          "Median over points [min-max]. NB = normal-bundle estimator (SVD of K scores around α_t0·x0); "
          "gap rules: log (largest ratio) and abs (largest difference), both after raising singular values "
          f"below {cfg['gap_floor']:g}·s_1 to that floor. Jacobian = singular values of the exact "
          "score Jacobian at α_t0·x0 (log gap). Two conservative parts of the teacher are compared with it: "
          "*local ∇φ* -- the least-squares projection of the teacher onto gradients of quadratic potentials over "
          "the NB ball itself (the measure the NB estimator integrates over; Lyapunov solve of the affine fit), "
          "and *network ∇φ* -- the potential network above (only as good as its fit: see ‖r‖²/‖s‖²). "
          "Angles = largest principal angle between the teacher's NB tangent space and that of each conservative "
          "part (at the teacher's ID). Local NAsym = antisymmetric share of the affine fit's Jacobian. "
          f"Flow = flow-Jacobian ID (∂x_t0/∂x_t1 from one held-out digit noised to σ = {cfg['flow_sigma1']:g}, "
          f"{cfg['flow_steps']} Heun steps uniform in log σ, "
          f"{'full Jacobian' if cfg['flow_cols'] is None else str(cfg['flow_cols']) + '-column sketch'}): "
          "the number of singular values whose log-log slope against σ over the last half of the range is "
          "below 0.5 (saturating, i.e. tangent); the log-gap count at t0 is in results.json. "
          f"TwoNN and MLE (k = {cfg['mle_k']}) on all digits of the class.", ""]

    def rng(v):
        v = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if v.numel() == 1:
            return f"{float(v[0]):.3g}"
        return f"{_median(v):.3g} [{float(v.min()):.3g}-{float(v.max()):.3g}]"

    L += _table(["class", "NB teacher log", "NB teacher abs", "NB local ∇φ log", "NB network ∇φ log",
                 "Jacobian teacher", "Jacobian local ∇φ", "Jacobian network ∇φ", "angle local (°)",
                 "angle network (°)", "local NAsym", "flow", "TwoNN", "MLE"],
                [[r["class"], rng(r["nb_raw_log"]), rng(r["nb_raw_abs"]), rng(r["nb_loc_log"]), rng(r["nb_phi_log"]),
                  rng(r["jac_raw"]), rng(r["jac_loc"]), rng(r["jac_phi"]), rng(r["angle_loc_deg"]),
                  rng(r["angle_phi_deg"]), rng(r["local_nasym"]), "-" if r["flow"] is None else r["flow"],
                  r["twonn"], r["mle"]] for r in res["per_class"]])
    allc = res["classical"]["all"]
    L += ["", f"All {allc['n']} digits: TwoNN {allc['twonn']:.3g}, MLE {allc['mle']:.3g}.", "",
          f"![ID per class]({files['id']})", ""]
    if "spectra" in files:
        L += [f"![NB spectra]({files['spectra']})", ""]
    if "flow" in files:
        L += [f"![flow Jacobian]({files['flow']})", ""]
    L += ["## Timings (s)", ""]
    L += _table(["step", "seconds"], [[k, v] for k, v in res["timings_s"].items()])
    return "\n".join(L) + "\n"


def _write_outputs(res, output, cfg):
    os.makedirs(output, exist_ok=True)
    files = _plots(res, output)
    res["files"] = files
    md = _markdown(res, files)
    write_text_atomically(os.path.join(output, "report.md"), md)
    write_text_atomically(os.path.join(output, "results.json"), json.dumps(res, indent=1, default=float))
