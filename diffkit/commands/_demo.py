"""What the demo steps of several commands share: the report context and the teacher they draw from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["DemoContext", "demo_teacher"]


@dataclass
class DemoContext:
    output: str
    quick: bool = False
    report: list = field(default_factory=list)

    def path(self, name: str) -> str:
        return os.path.join(self.output, name)

    def say(self, line: str = "") -> None:
        print(line)
        self.report.append(line)


def demo_teacher():
    """(pipeline, description): the shipped digits teacher, else a tiny random-weight class UNet
    (so the demo still runs in a checkout whose assets are being rebuilt)."""
    from diffusers import DDIMScheduler

    from diffkit.assets import AssetError
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.testing import tiny_unet2d

    try:
        pipe, what = load_pipeline("digits-unet"), "the shipped digits teacher"
    except AssetError:
        pipe = ClassConditionalPipeline(tiny_unet2d(num_classes=10), DDIMScheduler())
        what = "a tiny random-weight UNet (assets/digits-unet not available yet)"
    pipe.set_progress_bar_config(disable=True)
    return pipe, what
