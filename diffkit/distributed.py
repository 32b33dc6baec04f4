"""The lifetime of the ``torch.distributed`` process group that diffkit creates.

Under ``accelerate launch`` or torchrun, diffkit creates the default process group itself,
through accelerate (``PartialState`` in :func:`diffkit.metrics.sharding.shard_info`,
``Accelerator`` in :func:`diffkit.train.make_accelerator`). A group created that way is
destroyed when the interpreter exits, by an ``atexit`` handler, i.e. while Python is still
fully alive. Left to interpreter finalisation, a gloo group aborts the process now and then
(``terminate called without an active exception``, SIGABRT): a gloo worker thread still
holds the tensors of the last collective for a moment after ``wait()`` has returned; when it
drops them after finalisation has begun it needs the GIL to release their Python objects,
Python ends such a thread with ``pthread_exit``, and the unwinding reaches a ``noexcept``
destructor (``AsyncAllgatherWork``). ``torch.distributed.destroy_process_group`` joins those
threads, letting any in-flight work finish first.

A group that existed before (created by the caller or a launcher) is left alone, and so is
the group when an uncaught exception ends the process: other processes may then be blocked
in a collective this one will never join, and the destruction would wait on its own
unfinished work until the timeout instead of letting the launcher stop the run.
"""

from __future__ import annotations

import atexit
import sys
import weakref
from contextlib import contextmanager

import torch

__all__ = ["default_group", "destroying_created_group_at_exit"]

_owned: list = []  # weak references to the default groups diffkit created
_registered = False


def default_group():
    """The default process group, or ``None`` when ``torch.distributed`` is not initialised."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return torch.distributed.group.WORLD


@contextmanager
def destroying_created_group_at_exit():
    """Run the block; if it created the default process group, destroy that group at exit."""
    global _registered
    before = default_group()
    yield
    created = default_group()
    if created is None or created is before:
        return
    _owned.append(weakref.ref(created))
    if not _registered:
        atexit.register(_destroy_owned_group)
        _registered = True


def _destroy_owned_group() -> None:
    group = default_group()
    if group is None or not any(group is ref() for ref in _owned):
        return  # already destroyed, or the current group is not one diffkit created
    if getattr(sys, "last_value", None) is not None:
        return  # an uncaught exception is ending the process (see the module docstring)
    torch.distributed.destroy_process_group()
