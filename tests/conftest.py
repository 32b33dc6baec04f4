"""Shared fixtures: tiny offline models (no hub access), CPU determinism."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_sd():
    from diffkit.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sdxl():
    from diffkit.testing import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_unet():
    from diffkit.testing import tiny_unet2d

    return tiny_unet2d()


@pytest.fixture
def tiny_class_unet():
    from diffkit.testing import tiny_unet2d

    return tiny_unet2d(num_classes=10)


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules opt in with ``pytestmark``): tiny models and many
    small ops gain nothing from a second thread, and on a shared 2-core machine two spinning
    OpenMP threads per process slowed such tests several-fold."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
