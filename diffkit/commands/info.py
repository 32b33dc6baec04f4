"""diffkit info: versions, device, the usable attention backend and the registered samplers."""

from __future__ import annotations

import platform

from diffkit.versions import package_versions

NAME = "info"
HELP = "print versions, device, the attention backend diffkit would use and the registered samplers"

PACKAGES = ["diffkit", "torch", "torchvision", "diffusers", "accelerate", "transformers", "torchmetrics",
            "clean-fid", "scipy", "safetensors", "xformers", "torch-fidelity"]


def add_arguments(p):
    p.add_argument("--device", default=None, help="device to probe (default: cuda if available, else cpu)")


def versions() -> dict:
    return {"python": platform.python_version(), **package_versions(PACKAGES, missing="not installed")}


def run(args):
    import torch

    from diffkit.attention import probe_xformers
    from diffkit.registry import available_samplers

    for k, v in versions().items():
        print(f"{k:>14}: {v}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{'device':>14}: {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    ok, reason = probe_xformers(device, dtype)
    print(f"{'attention':>14}: {'xformers' if ok else 'sdpa'} ({'xformers ' + reason})")
    print(f"{'samplers':>14}: {', '.join(available_samplers())} (descriptions: diffkit sample --list-samplers)")
