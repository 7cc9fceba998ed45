"""Checkpoint and resume of a distributed distillation run.

Each rank saves, after every ``--checkpoint-every K``-th call of
:meth:`~pipebd.runtime.RankContext.after_step`, the state of every trainer it holds
(:meth:`~pipebd.distill.BlockTrainer.state`: block weights and buffers, optimizer, schedule,
step count, plus the NAS paths sampled so far), its RNG states and the run's
:func:`fingerprint`. Files are keyed by (rank, call count)::

    DIR/fingerprint.json              the fingerprint, for a cheap check before spawning
    DIR/rank0/ckpt-00000012.pt        rank 0 after its 12th after_step call

and written atomically (:func:`pipebd.fileio.atomic_write`: ``torch.save`` to a temporary file in
the same directory, fsync, then ``os.replace``), so a rank killed mid-save leaves the previous
checkpoint intact.

``--resume`` restores, on every rank, the latest call count that *all* ranks have saved: a
consistent cut. Ranks of a pipelined strategy (``tr-dpu``) run at different steps, so each
rank's newest file is generally not part of the cut. Because the teacher is frozen and the
data order is a function of (seed, step), restarting every rank at the same call count and
refilling the pipeline reproduces the uninterrupted run bit for bit; the trainers resume
from their restored ``step_count`` (the strategy convention in
:class:`~pipebd.strategies.Strategy`). Checkpoints load with ``torch.load(weights_only=True)``;
a checkpoint written by a different run (workload, strategy, layout, devices, batch size,
seed, steps, ...) is refused with the field that differs.

Old files are pruned safely: a rank deletes its own checkpoints older than the newest call
count every rank has, so the cut a resume needs is never deleted. (Pruning looks at the
other ranks' directories, so it only happens where they are visible: always for local
runs; on multi-node runs without a shared directory, nothing is pruned.)
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any

import torch

from .config import RunConfig
from .errors import CheckpointError
from .fileio import atomic_write, atomic_write_text

__all__ = ["fingerprint", "Checkpointer", "CheckpointError", "check_resumable", "available_counts",
           "common_count", "restore_trainer", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FILE_RE = re.compile(r"^ckpt-(\d{8,})\.pt$")
_RANK_RE = re.compile(r"^rank(\d+)$")

#: Configuration fields a checkpoint must agree on to be resumed (they change what is trained).
FINGERPRINT_FIELDS = ("workload", "strategy", "devices", "batch_size", "seed", "resolution", "width_mult",
                      "num_classes", "teacher_weights", "student_bn", "data", "data_root", "data_size", "augment",
                      "optimizer", "lr", "weight_decay", "shards", "stages", "ls_map", "plan", "inflight", "nas_zero",
                      "teacher_precision", "student_precision", "memory_format", "modes")


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """What identifies a run's training for resume: layout, sizes, seed and total steps."""
    fp: dict[str, Any] = {k: getattr(cfg, k) for k in FINGERPRINT_FIELDS}
    fp["teacher_weights"] = os.path.abspath(cfg.teacher_weights) if cfg.teacher_weights else None
    fp["data_root"] = os.path.abspath(cfg.data_root) if cfg.data_root else None
    fp["total_steps"] = cfg.total_steps
    return fp


def _diff(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}" for k in keys
            if saved.get(k) != current.get(k)]


def _rank_dir(root: str, rank: int) -> str:
    return os.path.join(root, f"rank{rank}")


def _ckpt_path(root: str, rank: int, count: int) -> str:
    return os.path.join(_rank_dir(root, rank), f"ckpt-{count:08d}.pt")


def available_counts(root: str, rank: int) -> list[int]:
    """Call counts rank ``rank`` has complete checkpoints of (temporary files are ignored)."""
    try:
        names = os.listdir(_rank_dir(root, rank))
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _FILE_RE.match(n)))


def common_count(counts_per_rank: list[list[int]]) -> int | None:
    """The newest call count every rank has (the consistent cut), or None."""
    if not counts_per_rank:
        return None
    common = set(counts_per_rank[0]).intersection(*map(set, counts_per_rank[1:]))
    return max(common) if common else None


def _read_fingerprint(root: str) -> dict | None:
    path = os.path.join(root, "fingerprint.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _has_checkpoints(root: str) -> bool:
    if not os.path.isdir(root):
        return False
    for name in os.listdir(root):
        m = _RANK_RE.match(name)
        if m and available_counts(root, int(m.group(1))):
            return True
    return False


def check_resumable(cfg: RunConfig) -> None:
    """Before spawning: refuse a checkpoint directory that belongs to another run.

    ``--resume`` with checkpoints of a different fingerprint is refused; a fresh run (no
    ``--resume``) into a directory that already holds checkpoints is refused too, since
    mixing two runs' files would make a later resume restore the wrong one.
    """
    root = cfg.checkpoint_dir
    if root is None:
        return
    saved = _read_fingerprint(root)
    has = _has_checkpoints(root)
    if cfg.resume:
        if saved is not None:
            diff = _diff(saved, json.loads(json.dumps(fingerprint(cfg))))
            if diff:
                raise CheckpointError(
                    f"--resume: the checkpoints in {root!r} belong to another run ({'; '.join(diff)}); "
                    "resume with the same settings, or start a new run with another --checkpoint-dir")
        elif has:
            raise CheckpointError(f"--resume: {root!r} holds checkpoints but no fingerprint.json; they cannot be "
                                  "matched to this run. Start a new run with an empty --checkpoint-dir")
    elif has:
        raise CheckpointError(f"--checkpoint-dir {root!r} already holds checkpoints; pass --resume to continue that "
                              "run, or choose an empty --checkpoint-dir for a new one")


def rng_state(device: torch.device) -> dict:
    """Torch CPU (and CUDA) generator states and Python's ``random``, as weights-only data."""
    st = {"torch": torch.get_rng_state(), "python": _py_random_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _py_random_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def restore_trainer(trainer, state: dict) -> None:
    """Load a saved trainer state (block, optimizer, schedule, step, NAS paths) into ``trainer``."""
    trainer.block.load_state_dict(state["block"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step_count = int(state["step"])
    trainer.paths = [None if p is None else tuple(p) for p in state.get("paths", [])]


class Checkpointer:
    """One rank's checkpoints: ``maybe_save`` after each step, ``load_cut`` on resume."""

    def __init__(self, cfg: RunConfig, rank: int, world_size: int, device: torch.device):
        if cfg.checkpoint_dir is None:
            raise ValueError("Checkpointer needs cfg.checkpoint_dir")
        self.cfg = cfg
        self.root = cfg.checkpoint_dir
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.every = cfg.checkpoint_every
        self.fingerprint = json.loads(json.dumps(fingerprint(cfg)))  # tuples -> lists, as read back
        self.resumed_from: int | None = None

    # -- saving -------------------------------------------------------------------------
    def maybe_save(self, calls: int, trainers: dict) -> bool:
        """Save if ``calls`` is a multiple of ``--checkpoint-every``; return whether it saved."""
        if self.every <= 0 or calls % self.every:
            return False
        self.save(calls, trainers)
        return True

    def save(self, calls: int, trainers: dict) -> str:
        if self.rank == 0 and not os.path.isfile(os.path.join(self.root, "fingerprint.json")):
            atomic_write_text(os.path.join(self.root, "fingerprint.json"),
                              json.dumps(self.fingerprint, indent=1, sort_keys=True))
        payload = {
            "version": FORMAT_VERSION, "fingerprint": self.fingerprint, "rank": self.rank,
            "world_size": self.world_size, "calls": calls,
            "trainers": {int(i): {**t.state(), "paths": [None if p is None else list(p) for p in t.paths]}
                         for i, t in trainers.items()},
            "rng": rng_state(self.device),
        }
        path = _ckpt_path(self.root, self.rank, calls)
        atomic_write(path, lambda f: torch.save(payload, f), binary=True, fsync=True)
        self._prune()
        return path

    def _prune(self) -> None:
        counts = [available_counts(self.root, r) for r in range(self.world_size)]
        cut = common_count(counts)
        if cut is None:
            return
        for c in counts[self.rank]:
            if c < cut:
                try:
                    os.unlink(_ckpt_path(self.root, self.rank, c))
                except FileNotFoundError:
                    pass

    # -- resuming -----------------------------------------------------------------------
    def load_cut(self) -> dict | None:
        """Agree with the other ranks on the newest common call count and load it (collective).

        Returns this rank's checkpoint payload, or None when there is nothing to resume from
        (the run starts fresh).
        """
        import torch.distributed as dist

        mine = available_counts(self.root, self.rank)
        if self.world_size > 1 and dist.is_initialized():
            gathered: list = [None] * self.world_size
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        cut = common_count(gathered)
        if cut is None:
            if any(gathered):
                raise CheckpointError(
                    f"--resume: no checkpoint in {self.root!r} is common to all {self.world_size} ranks "
                    f"(call counts per rank: {gathered}); the run cannot be resumed consistently")
            return None
        path = _ckpt_path(self.root, self.rank, cut)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — corrupt, or not a weights-only file
            raise CheckpointError(f"checkpoint {path!r} could not be loaded with torch.load(weights_only=True): "
                                  f"{e}") from None
        diff = _diff(payload.get("fingerprint", {}), self.fingerprint)
        if diff:
            raise CheckpointError(f"checkpoint {path!r} belongs to another run ({'; '.join(diff)}); resume with the "
                                  "same settings, or use another --checkpoint-dir")
        if payload.get("version") != FORMAT_VERSION or payload.get("rank") != self.rank:
            raise CheckpointError(f"checkpoint {path!r} has format {payload.get('version')} for rank "
                                  f"{payload.get('rank')}; expected format {FORMAT_VERSION} for rank {self.rank}")
        self.resumed_from = cut
        return payload
