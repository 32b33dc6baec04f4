"""Score-field analysis of the digits teacher at the README's full size: the `diffkit analyze` run.

Runs exactly what ``diffkit analyze --model digits-unet`` runs (the command's own argument parser
and configuration, then :func:`diffkit.analysis.report.analyze_digits`), writes its report into
``--output`` (a temporary folder by default), and condenses the README's figures into the results
JSON: NAsym and loop curl over σ, the potential network's DSM decomposition on held-out digits,
the normal-bundle / Jacobian / flow-Jacobian IDs per class (median over points, then the range
over classes), TwoNN and MLE, and the tangent-space angles to the local conservative part.

    diffkit bench gauge                   # full size -> benchmarks/results/gauge.json
    python benchmarks/gauge.py --quick    # the demo's reduced analysis (--json PATH to keep it)

Full size: about 134 s of CPU (user + system; 9 min of wall time under a load of ~10 from other jobs)
on one thread of the 2-core x86_64 machine (--quick: about 20 s of CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from diffkit.analysis.report import analyze_digits  # noqa: E402
from diffkit.commands import analyze as analyze_cmd  # noqa: E402


def span(values) -> dict:
    """min and max of a list (the README quotes ranges over classes or σ)."""
    values = [float(v) for v in values]
    return {"min": min(values), "max": max(values)}


def summarise(res: dict) -> dict:
    """The README's figures from the analysis results (per-class medians, then ranges over classes)."""
    per = res["per_class"]
    med = lambda key: [statistics.median(r[key]) for r in per]  # noqa: E731
    pot = res["potential"]
    return {
        "sigma_t0": res["sigma_t0"],
        "nasym": span(r["nasym_mean"] for r in res["nasym"]),
        "nasym_sigma": span(r["sigma"] for r in res["nasym"]),
        "loop_curl_median_max": max(r["loop_curl_median"] for r in res["nasym"]),
        "potential_steps": pot["steps"],
        "dsm_score": pot["dsm_score"],
        "dsm_conservative": pot["dsm_conservative"],
        "gauge_fraction": pot["gauge_fraction"],
        "projection_reached": pot["dsm_conservative"] <= pot["dsm_score"],
        "id_teacher": span(med("nb_raw_log")),
        "id_local_conservative": span(med("nb_loc_log")),
        "id_jacobian": span(med("jac_raw")),
        "id_flow_slope": span(r["flow"] for r in per if r["flow"] is not None),
        "id_twonn": span(r["twonn"] for r in per),
        "id_mle": span(r["mle"] for r in per),
        "angle_local_deg": span(med("angle_loc_deg")),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the demo's reduced analysis (seconds)")
    p.add_argument("--model", default="digits-unet", help="pipeline folder or asset name (default: digits-unet)")
    p.add_argument("--output", default=None, help="folder for the report (default: a temporary folder)")
    p.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/gauge.json for a full "
                   "run through `diffkit bench gauge`; none for --quick)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        output = args.output or str(Path(tmp) / "analysis")
        cli = argparse.ArgumentParser()
        analyze_cmd.add_arguments(cli)
        ns = cli.parse_args(["--model", args.model, "--output", output, "--threads", "1",
                             *(["--quick"] if args.quick else [])])
        cfg = analyze_cmd.config_from_args(ns)  # the command's own configuration
        t0 = time.process_time()
        res = analyze_digits(ns.model, ns.output, cfg)
        cpu = time.process_time() - t0
    out = {"quick": args.quick, "model": res["model"], "config": res["config"], "figures": summarise(res),
           "per_class": res["per_class"], "nasym": res["nasym"], "potential": res["potential"],
           "timings_s": res["timings_s"], "cpu_s": cpu}
    f = out["figures"]
    print(f"\nNAsym {f['nasym']['min']:.2g}-{f['nasym']['max']:.2g} for σ {f['nasym_sigma']['min']:.2g}-"
          f"{f['nasym_sigma']['max']:.2g}; loop curl median ≤ {f['loop_curl_median_max']:.2g}; "
          f"DSM(∇φ) {f['dsm_conservative']:.3g} vs DSM(s) {f['dsm_score']:.3g}, ‖r‖²/‖s‖² {f['gauge_fraction']:.2f}")
    for k in ("id_teacher", "id_local_conservative", "id_jacobian", "id_flow_slope", "id_twonn", "id_mle",
              "angle_local_deg"):
        print(f"{k}: {f[k]['min']:.3g}-{f[k]['max']:.3g}")
    print(f"CPU {cpu:.0f} s")
    save_results(out, "gauge", json_path=args.json, quick=args.quick, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
