"""The GPU check's harness: model sizes, the report rows, timing clock, environment and context
(benchmarks/gpu/sections.py holds the measured sections; run.py is the launcher)."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from diffkit.atomic import write_text_atomically
from diffkit.versions import package_versions


# ---------------------------------------------------------------------------- sizes
SD15_UNET = dict(  # Stable Diffusion 1.5's UNet config (sample_size only names the 1024 px latent)
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
RADD_SMALL = dict(vocab_size=50257, hidden_size=768, n_heads=12, n_blocks=12, length=1024)
RADD_TINY = dict(vocab_size=256, hidden_size=32, n_heads=2, n_blocks=2, length=64)


@dataclass
class Sizes:
    unet: dict
    latent: int
    text_len: int
    fwd_reps: int
    loop_steps: int
    loop_pairs: int  # A-B-B-A pairs of sampling loops (the cap may stop earlier; at least one)
    rt_steps: int
    radd: dict
    radd_runs: tuple  # ((label, n, batch), ...)
    radd_fwd_reps: int
    disback_teacher: str
    disback_batch: int
    disback_steps: int
    disback_warmup: int
    caps: dict = field(default_factory=dict)  # section -> seconds of repeated measurements


REAL = Sizes(unet=SD15_UNET, latent=128, text_len=77, fwd_reps=5, loop_steps=50, loop_pairs=2, rt_steps=20,
             radd=RADD_SMALL, radd_runs=(("b1", 4096, 1), ("b8", 1024, 8)), radd_fwd_reps=10,
             disback_teacher="digits-unet", disback_batch=32, disback_steps=20, disback_warmup=3,
             caps=dict(attention=15, bdia_loop=35, radd_fwd=5, disback=10))
TINY = Sizes(unet=TINY_UNET, latent=16, text_len=8, fwd_reps=3, loop_steps=20, loop_pairs=1, rt_steps=10,
             radd=RADD_TINY, radd_runs=(("b1", 256, 1), ("b8", 64, 8)), radd_fwd_reps=3,
             disback_teacher="digits-unet", disback_batch=8, disback_steps=2, disback_warmup=1,
             caps=dict(attention=3, bdia_loop=6, radd_fwd=2, disback=4))

GAMMA = 0.94  # BDIA's γ for sampling and inversion (the inversion module's default)
GUIDANCE = 7.5  # CFG scale of the sampling loop (SD's default)
RT_GUIDANCE = 3.0  # CFG scale of the round trip (as in benchmarks/bdia_overhead.py)

# Every row the report always contains (a failed or skipped section still lists its rows).
ROWS = {
    "attention": ["attention.choice", "attention.sdpa.forward_ms", "attention.sdpa.peak_mem_gib",
                  "attention.xformers.forward_ms", "attention.xformers.peak_mem_gib", "attention.xformers.rel_diff"],
    "repeat": ["repeat.bitwise"],
    "bdia": ["bdia.step_us.ddim", "bdia.step_us.bdia", "bdia.step_share", "bdia.loop_s.ddim", "bdia.loop_s.bdia",
             "bdia.loop_ratio", "bdia.roundtrip.state64", "bdia.roundtrip.state32"],
    "radd": ["radd.forward_ms.b1", "radd.forward_ms.b8",
             "radd.b1.cached_s", "radd.b1.nfe", "radd.b1.uncached_s", "radd.b1.speedup",
             "radd.b8.cached_s", "radd.b8.nfe", "radd.b8.uncached_s", "radd.b8.speedup"],
    "disback": ["disback.steps_per_s"],
}
STATUSES = ("ok", "miss", "fallback", "unavailable", "error", "skipped")


# ---------------------------------------------------------------------------- report
class Report:
    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.sections: dict[str, dict] = {}

    def add(self, id, metric, value, unit="", goal=None, met=None, status=None, note=""):
        """One row; ``met`` (goal met?) turns into status ok/miss unless ``status`` is given."""
        if status is None:
            status = "ok" if met in (None, True) else "miss"
        if isinstance(value, float) and not math.isfinite(value) and status == "ok":
            status = "error"
            note = (note + "; " if note else "") + "non-finite value"
        self.rows[id] = dict(id=id, section=id.split(".")[0], metric=metric, value=value, unit=unit, goal=goal,
                             status=status, note=note)

    def fill(self, section, status, note):
        for rid in ROWS[section]:
            if rid not in self.rows:
                self.rows[rid] = dict(id=rid, section=section, metric=rid, value=None, unit="", goal=None,
                                      status=status, note=note)

    def ordered(self):
        ids = [r for sec in ROWS.values() for r in sec]
        return [self.rows[i] for i in ids if i in self.rows] + [r for i, r in self.rows.items() if i not in ids]


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.2e}"
    return str(v)


def table(report: Report) -> str:
    lines = ["| metric | value | unit | goal | status | note |", "|---|---|---|---|---|---|"]
    for r in report.ordered():
        note = str(r["note"]).replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['metric']} | {fmt(r['value'])} | {r['unit']} | {r['goal'] or ''} | {r['status']} "
                     f"| {note} |")
    return "\n".join(lines)


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, text)


# ---------------------------------------------------------------------------- timing
class Clock:
    """Seconds of a call: CUDA events on a GPU (the call's span on the stream, host gaps
    included), perf_counter on CPU."""

    def __init__(self, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn):
        if self.cuda:
            start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    def repeat(self, fn, warmup: int, reps: int, cap_s: float) -> list[float]:
        """``warmup`` untimed calls, then up to ``reps`` timed ones while within ``cap_s`` (at least one)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times, t0 = [], time.perf_counter()
        while len(times) < reps and (not times or time.perf_counter() - t0 < cap_s):
            times.append(self.time(fn)[0])
        return times

    def peak_gib(self, fn):
        """Peak allocated GPU memory during one call (None on CPU)."""
        if not self.cuda:
            return None
        self.sync()
        self.torch.cuda.reset_peak_memory_stats()
        fn()
        self.sync()
        return self.torch.cuda.max_memory_allocated() / 2**30


def rel_diff(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---------------------------------------------------------------------------- environment
def environment(device, tiny: bool, xformers_hidden: str | None = None) -> dict:
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               device=str(device), tiny=tiny, host=platform.node(), cpu_threads=torch.get_num_threads())
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1))
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip()
        except Exception as e:  # no nvidia-smi on PATH: say so, do not fail
            env["driver"] = f"unknown ({type(e).__name__})"
    else:
        env.update(card=f"CPU ({platform.machine()}, {os.cpu_count()} cores)", driver=None)
    # the installed distributions' versions: nothing is imported (xformers may be broken)
    env.update(package_versions(("diffusers", "xformers", "numpy", "accelerate", "transformers"), missing="absent"))
    if xformers_hidden:
        env["xformers"] += f" (hidden: {xformers_hidden})"
    return env


# ---------------------------------------------------------------------------- sections
class Ctx:
    """What the sections share: device, dtype, sizes, clock, report, the UNet and its inputs."""

    def __init__(self, args, report):
        self.torch = torch
        self.args, self.report = args, report
        self.device = torch.device(args.device)
        self.sizes = TINY if args.tiny else REAL
        # fp16 is the point on a GPU; CPU kernels for fp16 convolutions are slow or missing
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dname = str(self.dtype).replace("torch.", "")
        self.clock = Clock(self.device)
        self.xformers_hidden = None
        self._unet = None

    def generator(self, seed=0):
        return self.torch.Generator(self.device).manual_seed(seed)

    def unet(self):
        """The SD-shaped UNet (built once) and CFG-batch inputs (z, t, text states)."""
        torch = self.torch
        if self._unet is None:
            s = self.sizes
            torch.manual_seed(0)
            with torch.device(self.device):  # initialise on the device: seconds instead of a minute on CPU
                unet = UNet2DConditionModel(**s.unet)
            unet = unet.to(self.dtype).eval().requires_grad_(False)
            g = self.generator(1)
            z = torch.randn(2, 4, s.latent, s.latent, generator=g, device=self.device, dtype=self.dtype)
            ehs = torch.randn(2, s.text_len, s.unet["cross_attention_dim"], generator=g, device=self.device,
                              dtype=self.dtype)
            t = torch.full((2,), 981, device=self.device, dtype=torch.long)
            self._unet = (unet, z, t, ehs)
        return self._unet

    def drop_unet(self):
        self._unet = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
