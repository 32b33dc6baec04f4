"""Stage 1's records (DisBack, Zhang et al. 2024, arXiv 2408.15991, Alg. 1): where the
degradation path is snapshotted, which snapshots become its nodes, and the manifest
``stage1/path.json`` that Stage 2 reads. Pure functions and records; no training.

Node 0 is the teacher (not stored again); nodes 1..N are files under ``stage1/path/``, each
with the SHA-256 of its file, so Stage 2 can refuse a corrupt or foreign path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


from diffkit.weights import file_sha256, state_dict_sha256

__all__ = ["PATH_FILE", "PathManifest", "load_path_manifest", "stage1_boundaries", "log_spaced_steps",
           "select_nodes", "state_fingerprint"]

PATH_FILE = "path.json"
#: the fingerprint of a node's weights (one helper: diffkit.weights.state_dict_sha256)
state_fingerprint = state_dict_sha256


def log_spaced_steps(count: int, total: int) -> list[int]:
    """``count`` distinct steps in 1..``total``, geometrically spaced (step j ≈ total^(j/count)) and
    ending at ``total``; where rounding would repeat a step, the next free step is taken."""
    count = min(count, total)
    out, prev = [], 0
    for j in range(1, count + 1):
        s = min(max(prev + 1, round(total ** (j / count))), total - (count - j))
        out.append(s)
        prev = s
    return out


def stage1_boundaries(stage1_steps: int, path_nodes: int, spacing: str, progress_candidates: int) -> list[int]:
    """Steps at which Stage 1 snapshots the network: every node (``"even"``, ``"log"``), or
    ``progress_candidates`` candidates per node (``"progress"``: evenly spaced over the run;
    ``"log-progress"``: log-spaced, so that an early drop of the loss is caught)."""
    c = path_nodes * (progress_candidates if spacing in ("progress", "log-progress") else 1)
    c = min(c, stage1_steps)
    if spacing in ("log", "log-progress"):
        return log_spaced_steps(c, stage1_steps)
    return sorted({max(1, round(j * stage1_steps / c)) for j in range(1, c + 1)})


def select_nodes(candidates: list[dict], eval_loss_0: float, path_nodes: int, spacing: str) -> tuple[list[dict], bool]:
    """(the N candidates that become nodes 1..N, whether ``"progress"`` fell back to even spacing).

    ``candidates``: ``{"step", "file", "eval_loss"}`` snapshots; the last node is always the
    final state. ``"progress"`` (and ``"log-progress"``) places node i at the first candidate whose DSM-loss progress
    (l₀ − l)/(l₀ − l_N) on a fixed G⁰ batch reaches i/N, leaving room for the later nodes; when
    the loss did not fall it spaces the nodes evenly instead (and says so).
    """
    cands = sorted(candidates, key=lambda c: c["step"])
    N = path_nodes
    if spacing in ("even", "log") or len(cands) == N:
        return (cands[-N:] if len(cands) > N else cands), False
    l0, lN = eval_loss_0, cands[-1]["eval_loss"]
    if not l0 - lN > 0:
        return [cands[round((i + 1) * len(cands) / N) - 1] for i in range(N)], True
    chosen, j = [], -1
    for i in range(1, N):
        # first candidate past the previous node whose progress reaches i/N, leaving room for the rest
        limit = len(cands) - 1 - (N - i)
        j = next((k for k in range(j + 1, limit + 1) if (l0 - cands[k]["eval_loss"]) / (l0 - lN) >= i / N), limit)
        chosen.append(cands[j])
    return chosen + [cands[-1]], False


@dataclass
class PathManifest:
    """``stage1/path.json``: the recorded degradation path (node 0 = the teacher, not stored)."""

    directory: Path
    nodes: list            # [{"index", "step", "file", "sha256", "eval_loss", "bytes"}], index 0 .. N
    teacher_sha256: str
    info: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        """N, the number of stored nodes (node 0, the teacher, excluded)."""
        return len(self.nodes) - 1

    def node_file(self, i: int) -> Path:
        if not 1 <= i <= self.num_nodes:
            raise ValueError(f"path node must be in 1..{self.num_nodes}, got {i}")
        return self.directory / self.nodes[i]["file"]

    @property
    def disk_bytes(self) -> int:
        return sum(int(n.get("bytes") or 0) for n in self.nodes[1:])


def load_path_manifest(stage1_dir, teacher_sha256: Optional[str] = None, expect_nodes: Optional[int] = None,
                       verify_files: bool = True) -> PathManifest:
    """Read and check a Stage-1 path: present, parseable, same teacher, every node file intact."""
    d = Path(stage1_dir)
    p = d / PATH_FILE
    if not p.exists():
        hint = " (the folder does not exist)" if not d.exists() else ""
        raise FileNotFoundError(
            f"Stage-1 path not found: {p} is missing{hint}. Record it first (mode 'disback' or 'warm-critic' runs "
            f"Stage 1 into <run-dir>/stage1 automatically; `diffkit distill --stage 1` runs only Stage 1), or point "
            f"--stage1-dir at a finished Stage-1 folder.")
    try:
        raw = json.loads(p.read_text())
        nodes = raw["nodes"]
        if not isinstance(nodes, list) or len(nodes) < 2 or [n["index"] for n in nodes] != list(range(len(nodes))):
            raise ValueError("node list malformed")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"Stage-1 path {p} is corrupt ({e}); delete {d} and rerun Stage 1") from None
    m = PathManifest(d, nodes, raw.get("teacher_sha256", ""), raw.get("info", {}))
    if teacher_sha256 is not None and m.teacher_sha256 != teacher_sha256:
        raise ValueError(f"Stage-1 path {d} was recorded from a different teacher (teacher sha256 "
                         f"{m.teacher_sha256[:12]}… vs {teacher_sha256[:12]}…); rerun Stage 1 for this teacher")
    if expect_nodes is not None and m.num_nodes != expect_nodes:
        raise ValueError(f"Stage-1 path {d} has {m.num_nodes} nodes but path_nodes={expect_nodes}; "
                         f"use --path-nodes {m.num_nodes} or rerun Stage 1")
    if verify_files:
        for i in range(1, m.num_nodes + 1):
            f = m.node_file(i)
            if not f.exists():
                raise FileNotFoundError(f"Stage-1 path {d}: node {i} file {f} is missing; rerun Stage 1")
            if file_sha256(f) != m.nodes[i]["sha256"]:
                raise ValueError(f"Stage-1 path {d}: node {i} file {f} is corrupt (sha256 differs from {PATH_FILE}); "
                                 "rerun Stage 1")
    return m
