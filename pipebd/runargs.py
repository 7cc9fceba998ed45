"""The run options as command-line arguments: the one definition of every ``RunConfig`` flag,
shared by every command that runs something (``run``, ``verify``, ``schedule``, ``plan``,
``profile``, ``bench``), and their conversion back to a :class:`~pipebd.config.RunConfig`."""

from __future__ import annotations

import argparse
import re

from .config import RunConfig

__all__ = ["add_run_options", "config_from_args", "parse_bytes"]


def add_run_options(p: argparse.ArgumentParser, *, strategy: bool = True) -> None:
    d = RunConfig()
    g = p.add_argument_group("workload")
    g.add_argument("--workload", "-w", default=d.workload, help="workload name (see `python -m pipebd zoo`)")
    g.add_argument("--resolution", type=int, default=None, help="input resolution in pixels (workload default)")
    g.add_argument("--width-mult", type=float, default=d.width_mult, help="channel width multiplier")
    g.add_argument("--num-classes", type=int, default=None, help="number of classes (dataset default)")
    g.add_argument("--teacher-weights", default=None, metavar="PATH",
                   help="state dict of the full teacher (torch.save(model.state_dict())); random init if absent; "
                        "llm-smol: smollm2 is SmolLM2-135M-Instruct (./bootstrap.sh --with-smollm2)")
    g.add_argument("--no-student-bn", dest="student_bn", action="store_false",
                   help="tiny only: a BatchNorm-free student")
    g.add_argument("--no-nas-zero", dest="nas_zero", action="store_false",
                   help="nas-*: no Zero (skip) choice in the supernet (the paper has one on every cell but the first "
                        "of each stage)")
    g = p.add_argument_group("decoder workloads (llm-*)")
    g.add_argument("--seq-len", type=int, default=None, help="tokens per sample (workload default: 64)")
    g.add_argument("--layers-per-block", type=int, default=d.layers_per_block,
                   help="consecutive decoder layers per block (default 1)")
    g.add_argument("--candidates", default=None, metavar="LIB",
                   help="candidate students per block: uniform (default: ffn0.5,kv1), uneven, a list "
                        "(ffn0.5,kv1,linattn,noattn,noffn) or ranges of blocks (0-3=ffn1,ffn0.5;4-9=ffn0.5)")
    g.add_argument("--logits-kd", action="store_true", help="the last block's output is the logits, distilled with KL")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="synthetic (default), cifar10, imagenet, mnist5k (5,000 real "
                   "digits, offline: compress-mnist / nas-mnist), or text (llm-*)")
    g.add_argument("--data-root", default=None,
                   help="dataset directory for cifar10 / imagenet; for text a folder of .txt/.py files, or stdlib "
                        "(the Python standard library's sources)")
    g.add_argument("--data-size", type=int, default=None, help="samples per epoch: synthetic's size, or the first N "
                   "of mnist5k's training split / of the text corpus")
    g.add_argument("--augment", action="store_true", help="seeded random crop + horizontal flip (crop only for digits: mnist5k and its stand-in)")
    g = p.add_argument_group("training")
    if strategy:
        g.add_argument("--strategy", "-s", default=d.strategy, help="strategy name (see `python -m pipebd verify --list`)")
    g.add_argument("--devices", "-n", type=int, default=d.devices, help="number of ranks (devices)")
    g.add_argument("--device", dest="device_type", default=d.device_type, choices=("cpu", "cuda"))
    g.add_argument("--share-gpus", action="store_true",
                   help="cuda: allow more ranks than GPUs (ranks share GPUs; gloo transport staged through the host)")
    g.add_argument("--batch-size", "-b", type=int, default=d.batch_size, help="global batch size")
    g.add_argument("--steps", type=int, default=d.steps, help="measured steps per block")
    g.add_argument("--warmup", type=int, default=d.warmup, help="untimed warm-up steps per block (trained too)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adam"),
                   help="every student block's optimizer: sgd (Nesterov momentum 0.9) or adam (default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak of the cosine schedule (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g = p.add_argument_group("strategy layout")
    g.add_argument("--shards", type=int, default=d.shards, help="sequential: ghost shards per batch")
    g.add_argument("--stages", default=None, help="tr/tr-dpu: blocks per rank, e.g. 0-1,2-3,4-5")
    g.add_argument("--ls-map", default=None, help="ls: blocks per rank, e.g. 0:1:2,3:4,5")
    g.add_argument("--plan", default=None, help="ahd: a plan string as printed by `python -m pipebd plan`")
    g.add_argument("--inflight", type=int, default=d.inflight, help="tr-dpu/ahd: batches in flight per link")
    g.add_argument("--profile", default=None, metavar="CSV", help="reuse a profile written by `python -m pipebd profile`")
    g.add_argument("--epochs", type=int, default=d.epochs, metavar="E",
                   help="epochs the epoch figures are averaged over: cache pays its teacher pass once in E (default 1)")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache: keep the teacher-activation store in files under DIR when it does not fit in "
                        "--cache-memory (a complete store there is reused by later runs)")
    g.add_argument("--cache-memory", type=parse_bytes, default=None, metavar="BYTES",
                   help="cache: host memory the store may take, e.g. 4GiB (default: half the free shared memory)")
    g.add_argument("--cache-dtype", default=d.cache_dtype, choices=("auto", "fp32", "bf16", "fp16"),
                   help="cache: stored activation dtype; auto keeps each one's own (exact), bf16/fp16 halve an fp32 "
                        "store and are lossy")
    g.add_argument("--cache-refresh", default=d.cache_refresh, choices=("auto", "epoch", "never"),
                   help="cache: rebuild the store every epoch (epoch), reuse it (never: refused with --augment), or "
                        "auto: rebuild only when --augment makes it stale")
    g.add_argument("--memory-limit", type=parse_bytes, default=None, metavar="BYTES",
                   help="memory per device the planner may use, e.g. 70GiB or 8e9 (cuda default: the device's "
                        "total minus a margin; cpu: unlimited)")
    g = p.add_argument_group("compute modes (pipebd.modes; auto: chosen per block from the profile)")
    g.add_argument("--precision", default=None, choices=("fp32", "bf16", "auto"),
                   help="teacher and student precision: bf16 autocast (fp32 master weights, optimizer state and "
                        "loss) or fp32; auto (default) picks per block from the profile, fp32 without one")
    g.add_argument("--teacher-precision", default=None, choices=("fp32", "bf16", "auto"),
                   help="the teacher forward's precision (overrides --precision)")
    g.add_argument("--student-precision", default=None, choices=("fp32", "bf16", "auto"),
                   help="the students' precision (overrides --precision)")
    g.add_argument("--memory-format", default=None, choices=("auto", "contiguous", "channels-last"),
                   help="convolutional activations and weights NCHW (contiguous) or NHWC (channels-last); auto "
                        "(default) picks per block from the profile")
    g.add_argument("--modes", default=None, metavar="TEXT",
                   help="pin every block's modes, as `schedule` and runs.csv print them, e.g. "
                        "'teacher=bf16-cl*5;student=fp32-cl*2,bf16-cl*3' (overrides the three above)")
    g = p.add_argument_group("run control")
    g.add_argument("--threads", type=int, default=None, help="threads per rank (default: cores ÷ ranks)")
    g.add_argument("--timeout", type=float, default=d.timeout, help="seconds any communication may wait")
    g.add_argument("--out", default=d.out, help="results directory (runs.csv, ranks.csv, events.csv, traces/)")
    g.add_argument("--tag", default="", help="free text recorded in runs.csv")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    g.add_argument("--no-trace", dest="trace", action="store_false", help="skip events.csv and the Chrome trace")
    g.add_argument("--save-students", action="store_true",
                   help="write the final students to OUT/students/RUN_ID.pt (for `python -m pipebd export`)")
    g.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE in every rank (registers extra strategies)")
    g.add_argument("--inject-fault", default=None, metavar="RANK:STEP:raise|kill|hang",
                   help="testing aid: make RANK fail at STEP")
    g.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save per-rank checkpoints here (with --checkpoint-every) and resume from here (--resume)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="K",
                   help="save a checkpoint after every K training steps of each rank (0: never)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint every rank has in --checkpoint-dir")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> float:
    """``"70GiB"``, ``"512MB"``, ``"8e9"`` -> bytes (argparse type; a bad value is a usage error)."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 70GiB, 512MB or 8e9 (bytes)")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a memory limit must be > 0, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace, **override) -> RunConfig:
    fields = RunConfig.__dataclass_fields__
    kw = {k: v for k, v in vars(args).items() if k in fields}
    both = getattr(args, "precision", None)
    for part in ("teacher_precision", "student_precision"):  # --X-precision, else --precision, else auto
        if part in kw:
            kw[part] = kw[part] or both or "auto"
    if "memory_format" in kw:
        kw["memory_format"] = kw["memory_format"] or "auto"
    if "plugins" in kw:
        kw["plugins"] = tuple(kw["plugins"])
    kw.update(override)
    return RunConfig(**kw)
