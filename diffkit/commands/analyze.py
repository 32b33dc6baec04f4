"""diffkit analyze: gauge / conservativity / intrinsic-dimension report of a digits UNet."""

from __future__ import annotations

import os

from diffkit.commands._outputs import check_output_dir

NAME = "analyze"
HELP = "gauge / conservativity / intrinsic-dimension report of a digits UNet (--model DIR --output DIR)"
DEMO_ORDER = 60


def _ints(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--classes: expected comma-separated digits 0..9, got {text!r}") from None


def add_arguments(p):
    p.add_argument("--model", default="digits-unet",
                   help="pipeline folder or asset name of a 1-channel 8x8 UNet (default: digits-unet)")
    p.add_argument("--output", default="analysis-output", help="folder for report.md, results.json and PNGs")
    p.add_argument("--quick", action="store_true", help="reduced analysis (seconds; what the demo runs)")
    p.add_argument("--classes", default=None, help="comma-separated digit classes (default: all ten; quick: 0,1,7)")
    p.add_argument("--sigma0", type=float, default=None, help="noise std (std_vp) of the ID estimates (default 0.05)")
    p.add_argument("--points-per-class", type=int, default=None, help="held-out digits per class for NB/Jacobian IDs")
    p.add_argument("--potential-steps", type=int, default=None, help="Adam steps of the potential fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads during the analysis (default 1: its ops are small; 0 = leave as is)")


def config_from_args(args):
    from diffkit.analysis.report import AnalysisConfig

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = leave torch's setting), got {args.threads}")
    over = {"seed": args.seed, "threads": args.threads or None}
    if args.classes:
        over["classes"] = _ints(args.classes)
        over["spectra_classes"] = over["classes"][:3]
        over["flow_classes"] = over["classes"]
    if args.sigma0 is not None:
        if not 0 < args.sigma0 < 1:
            raise ValueError(f"--sigma0 must be in (0, 1) (a VP noise std), got {args.sigma0}")
        over["sigma0"] = args.sigma0
    if args.points_per_class is not None:
        if args.points_per_class < 1:
            raise ValueError(f"--points-per-class must be >= 1, got {args.points_per_class}")
        over["points_per_class"] = args.points_per_class
    if args.potential_steps is not None:
        if args.potential_steps < 1:
            raise ValueError(f"--potential-steps must be >= 1, got {args.potential_steps}")
        over["potential_steps"] = args.potential_steps
    if args.quick:
        if args.classes:
            over["flow_classes"] = over["classes"][:1]
        return AnalysisConfig.quick(**over)
    return AnalysisConfig(**over)


def run(args):
    from diffkit.analysis.report import analyze_digits

    cfg = config_from_args(args)
    check_output_dir(args.output, "--output")
    analyze_digits(args.model, args.output, cfg)


def demo_step(ctx):
    """Reduced gauge / ID analysis of the digits teacher (tiny random UNet if it is not shipped)."""
    from diffkit.analysis.report import AnalysisConfig, analyze_digits

    out = ctx.path("analysis")
    res = analyze_digits(None, out, AnalysisConfig.quick(), log=lambda m: None)
    nas = ", ".join(f"{r['nasym_mean']:.3f}@σ={r['sigma']:.2g}" for r in res["nasym"])
    ids = "; ".join(f"{r['class']}: teacher {sorted(r['nb_raw_log'])}, local ∇φ {sorted(r['nb_loc_log'])}, "
                    f"TwoNN {r['twonn']:.1f}" for r in res["per_class"])
    ctx.say(f"- Gauge analysis ({res['model']}): NAsym {nas}; NB ID at σ={res['sigma_t0']:.3g} — {ids} "
            f"-> `{os.path.join('analysis', 'report.md')}`")
