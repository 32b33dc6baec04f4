"""Worker for the 2-process tests, run as `python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/_dist_worker.py {train,fid,teardown} OUT_DIR [FOLDER | VIA]`.

Each rank is a fresh interpreter: forking the pytest process (accelerate's debug_launcher)
after torch has started its OpenMP thread pool can deadlock the children, and did so in CI.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/: the shared builders in helpers.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def train(out_dir):
    from diffkit.train import make_accelerator
    from helpers import tiny_trainer, trainer_state

    acc = make_accelerator(cpu=True)
    tr = tiny_trainer(Path(out_dir) / "run2", max_steps=3, batch_size=8, checkpoint_every=0, accelerator=acc)
    res = tr.fit()

    # SIGTERM to rank 1 alone during step 2: every rank finishes that step, one checkpoint is
    # written, every rank stops; resuming gives the uninterrupted run's weights.
    def sigterm_on_rank1(loss):
        def f(model, batch, indices, step):
            if step == 1 and acc.process_index == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss(model, batch, indices, step)

        return f

    run = Path(out_dir) / "run2-interrupted"
    stopped = None
    try:
        tiny_trainer(run, max_steps=3, batch_size=8, checkpoint_every=0, accelerator=acc,
                     loss_wrap=sigterm_on_rank1).fit()
    except KeyboardInterrupt as e:  # diffkit.train.TrainingInterrupted
        stopped = [getattr(e, "signum", None), getattr(e, "step", None)]
    listing = sorted(p.name for p in (run / "checkpoints").iterdir())
    files = sorted(p.name for p in (run / "checkpoints" / "step-0000002").iterdir())
    (Path(out_dir) / f"stopped-rank{acc.process_index}.json").write_text(json.dumps(stopped))
    resumed = tiny_trainer(run, max_steps=3, batch_size=8, checkpoint_every=0, accelerator=acc, init_seed=99)
    resumed.fit(resume="latest")
    if acc.is_main_process:
        torch.save({"state": trainer_state(tr), "log": [r["loss"] for r in res.log], "world": acc.num_processes,
                    "indices": [tr.local_indices(0).tolist()], "resumed": trainer_state(resumed), "listing": listing,
                    "files": files}, Path(out_dir) / "two.pt")


def fid(out_dir, folder):
    from diffkit.metrics import ModelSamples, compute_stats
    from diffkit.metrics.sharding import run_sharded, shard_info
    from helpers import small_cnn, tiny_class_pipeline

    info = shard_info()
    res = {"world": info.world}
    m = ModelSamples(tiny_class_pipeline(), "ddim", steps=3).build("cpu")
    res["images"] = run_sharded(13, lambda lo, hi: m.images(list(range(lo, hi)), seed=0).flatten(1).numpy(), info)
    res["model"] = compute_stats(ModelSamples(tiny_class_pipeline(), "ddim", steps=3), features=small_cnn(), n=13,
                                 batch_size=4).features
    for be in ("clean-fid", "torchmetrics"):
        st = compute_stats(folder, backend=be, features=small_cnn(), n=101, batch_size=16)
        res[f"{be}_f"], res[f"{be}_mu"], res[f"{be}_sigma"] = st.features, st.mu, st.sigma
    np.savez(os.path.join(out_dir, f"rank{info.rank}.npz"), **res)


class _SlowFinalisation:
    """Freed with the module globals while the interpreter finalises; keeps that phase open."""

    def __del__(self, sleep=time.sleep):
        sleep(2.0)


def teardown(out_dir, via):
    """Exit after the library created the group, with a collective still in flight on rank 1.

    An atexit check registered before the library's handler (so it runs after it) records
    whether the process group is still initialised and which gloo threads are alive. Rank 1
    leaves an all_gather whose completion runs Python on the gloo worker thread; rank 0 joins
    it only after a delay, while rank 1 is already exiting (the slow finaliser keeps rank 1's
    finalisation open past that moment). That widens, to a deterministic overlap, the window in
    which a gloo thread still holds a collective's tensors as the interpreter finalises: left to
    finalisation, the worker thread needs the GIL there and Python ends it with pthread_exit,
    which aborts the process ("terminate called without an active exception").
    """
    import atexit
    import json

    import torch.distributed as dist

    seen = {"callback_ran": False}

    def check():
        comm = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
        Path(out_dir, f"exit{os.environ['RANK']}.json").write_text(json.dumps(
            {"initialized": dist.is_initialized(), "gloo_threads": sorted(c for c in comm if "gloo" in c), **seen}))

    atexit.register(check)  # before the library registers its handler, so it runs after it
    if via == "accelerator":
        from accelerate.utils import gather

        from diffkit.train import make_accelerator

        acc = make_accelerator(cpu=True)
        rank = acc.process_index
        assert gather(torch.tensor([rank])).tolist() == [0, 1]
    else:
        from diffkit.metrics.sharding import run_sharded, shard_info

        info = shard_info()
        rank = info.rank
        feats = run_sharded(13, lambda lo, hi: np.arange(lo, hi, dtype=np.float32)[:, None].repeat(4, 1), info)
        assert feats[:, 0].tolist() == list(range(13))
    outs = [torch.empty(1) for _ in range(2)]
    if rank == 1:
        work = dist.all_gather(outs, torch.ones(1), async_op=True)
        work.get_future().then(lambda fut: seen.update(callback_ran=True))
        globals()["_slow"] = _SlowFinalisation()
    else:
        time.sleep(1.0)
        dist.all_gather(outs, torch.zeros(1))
        assert [float(o) for o in outs] == [0.0, 1.0]


def launch(*args, timeout=300):
    """Run this worker on 2 CPU processes (gloo); returns the CompletedProcess."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


if __name__ == "__main__":
    {"train": train, "fid": fid, "teardown": teardown}[sys.argv[1]](*sys.argv[2:])
