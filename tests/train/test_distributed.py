"""diffkit.distributed: a process group diffkit creates is destroyed before the interpreter exits."""

import json
import sys

import pytest
import torch

from diffkit.distributed import _destroy_owned_group, destroying_created_group_at_exit


@pytest.mark.parametrize("via", ["shard_info", "accelerator"])
def test_the_group_the_library_creates_is_destroyed_before_interpreter_exit(via, tmp_path):
    # tests/_dist_worker.py::teardown: both ranks create the group through the library
    # (shard_info for FID sharding, make_accelerator for training) and exit; rank 1 exits with
    # an all_gather still in flight, joined by rank 0 only while rank 1 is already exiting.
    # Left alive into interpreter finalisation, the gloo worker thread finishing that collective
    # aborts rank 1: "terminate called without an active exception" (SIGABRT), the failure the
    # 2-process FID test showed at random (there with the tail of the last collective).
    from _dist_worker import launch

    r = launch("teardown", tmp_path, via)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"exit{rank}.json").read_text())
        # checked at exit, after the library's handler: the group is gone and its threads joined
        assert seen["initialized"] is False and seen["gloo_threads"] == [], seen
    # the teardown let rank 1's in-flight collective finish (its completion callback ran)
    assert json.loads((tmp_path / "exit1.json").read_text())["callback_ran"] is True


def _single_process_group():
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)


def test_only_a_group_created_inside_the_block_is_destroyed_at_exit(monkeypatch):
    # the exit handler's decisions, in-process on a 1-process gloo group
    monkeypatch.delattr(sys, "last_value", raising=False)
    try:
        _single_process_group()  # created by the caller: left alone
        with destroying_created_group_at_exit():
            pass
        _destroy_owned_group()
        assert torch.distributed.is_initialized()
        torch.distributed.destroy_process_group()

        with destroying_created_group_at_exit():  # created inside: destroyed at exit
            _single_process_group()
        monkeypatch.setattr(sys, "last_value", RuntimeError("uncaught"), raising=False)
        _destroy_owned_group()  # ... but not while an uncaught exception ends the process
        assert torch.distributed.is_initialized()
        monkeypatch.delattr(sys, "last_value")
        _destroy_owned_group()
        assert not torch.distributed.is_initialized()
        _destroy_owned_group()  # nothing left to destroy: a no-op
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
