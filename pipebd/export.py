"""Get the student out of the harness: save a run's final students, export one network, load it back.

Three steps, each its own function:

1. :func:`save_students` — at the end of a run with ``--save-students``, rank 0 writes every block's
   final student weights with what rebuilds the blocks (the workload and its options; the NAS paths
   trained per step are not needed) to ``<out>/students/<run_id>.pt``, atomically.
2. :func:`export_student` (``python -m pipebd export RUN --out DIR``) — loads that file, stitches the
   students into one network (student block 0 → 1 → … → the last, whose output is the logits) and
   writes the *student only*: ``DIR/model.safetensors`` (the network's ``state_dict``, safetensors
   format) and ``DIR/student.json`` (the workload and options that rebuild its architecture, one
   path per supernet block, where it came from and its parameter count). A NAS supernet is exported
   as the architecture the search picks (:mod:`pipebd.search`: every block's paths rated by held-out
   loss, best under ``--budget``), or the paths given with ``--paths``; only the chosen ops are kept.
   When the run's data has a training split (``--data mnist5k``), the stitched network's BatchNorm
   statistics are first recalibrated on it (:func:`pipebd.quality.recalibrate_bn`, one label-free
   pass: the run's ``student_top1``; for a searched subnet, SPOS's step before using it), unless
   ``--no-recalibrate``; ``student.json`` says which (``batchnorm``).
   A decoder run (``llm-*``, a library of candidates per block) is exported as the student
   :mod:`pipebd.assembly` assembles under ``--budget`` (one candidate per block).
3. :func:`load_student` (``pipebd.load_student(DIR)``) — rebuilds that network as a plain
   ``torch.nn.Sequential`` of plain modules (no trainer, optimizer or harness state) and loads the
   weights with a strict key match. Call ``.eval()`` before inference.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["STUDENTS_FORMAT", "EXPORT_FORMAT", "students_path", "save_students", "read_students",
           "load_saved", "stitch", "export_student", "load_student"]

#: Format tag of ``<out>/students/<run_id>.pt``.
STUDENTS_FORMAT = "pipebd-students/1"
#: Format tag of ``student.json``.
EXPORT_FORMAT = "pipebd-student/1"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "student.json"


def students_path(out: str, run_id: str) -> str:
    """Where :func:`save_students` puts run ``run_id``'s students under results directory ``out``."""
    return os.path.join(out, "students", f"{run_id}.pt")


def save_students(path: str, *, run_id: str, workload: str, options, weights: Mapping[int, Mapping[str, torch.Tensor]],
                  metrics: Mapping[str, float | None] | None = None, data: str | None = None) -> None:
    """Write every block's final student ``state_dict`` and the workload options that rebuild the
    blocks (without ``teacher_weights``: the students' weights are all there is to load; the
    teacher's file is recorded beside them, for ``assemble``'s comparison) and the run's ``--data``
    (whose training split, if any, recalibrates an export's BatchNorm) to ``path``, atomically (a
    half-written file is never read)."""
    from .fileio import atomic_write

    opts = dataclasses.asdict(dataclasses.replace(options, teacher_weights=None))
    payload = {"format": STUDENTS_FORMAT, "run_id": run_id, "workload": workload, "options": opts,
               "teacher_weights": options.teacher_weights,  # what `assemble` compares with (not exported)
               "weights": {int(i): dict(w) for i, w in weights.items()}, "metrics": dict(metrics or {}),
               "data": data}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def read_students(run: str, results: str = "results") -> dict:
    """The payload :func:`save_students` wrote: ``run`` is that file, or a run id under ``results``."""
    path = run if os.path.isfile(run) else students_path(results, run)
    if not os.path.isfile(path):
        raise ConfigError(f"no saved students for {run!r}: neither a file nor {path} exists; run with "
                          f"--save-students (the quality experiment does) and pass the run id or the file")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != STUDENTS_FORMAT:
        raise ConfigError(f"{path} is not a students file of this version ({STUDENTS_FORMAT})")
    payload["path"] = path
    return payload


def _build(workload: str, options: Mapping, teacher_weights: str | None = None):
    from .zoo import WorkloadOptions, build_workload

    return build_workload(workload, WorkloadOptions(**{**dict(options), "teacher_weights": teacher_weights}))


def load_saved(payload: dict, *, teacher: bool = False):
    """The workload of a students file with every student block's saved weights loaded (strict
    keys); with ``teacher``, built with the run's teacher (what ``assemble`` rates against)."""
    workload = _build(payload["workload"], payload["options"], payload.get("teacher_weights") if teacher else None)
    for i, block in enumerate(workload.student):
        if i not in payload["weights"]:
            raise ConfigError(f"{payload['path']} has no weights for block {i}")
        block.load_state_dict(payload["weights"][i], strict=True)
    return workload


def _assembled(payload: dict, budget: float | None) -> tuple[nn.Module, list, dict]:
    """A decoder run's student: one candidate per block (:mod:`pipebd.assembly`) under ``budget``
    (a fraction of the teacher's decoder parameters), rated on the default held-out text with the
    run's teacher (rebuilt from the file the students record)."""
    from . import assembly

    if budget is None or not 0 < budget <= 1:
        raise ConfigError(f"{payload['workload']} holds a library of candidates per block: give --budget F "
                          f"(0 < F <= 1 of the teacher's decoder parameters) to export the assembled student")
    rated = assembly.rate(payload, assembly.default_text(), limit=32)
    choice, loss, _cost = assembly.choose(rated.table, budget * rated.teacher_params)
    net = assembly.AssembledLM(rated.workload, choice)
    return net, [None] * len(choice), {"chosen_by": "assemble", "budget": budget, "choice": choice,
                                       "candidates": net.names, "summed_heldout_loss": loss}


def _fixed(block: nn.Module, path: Sequence[int] | None) -> nn.Module:
    """A supernet block on one path as a plain ``nn.Sequential`` (prefix, chosen ops, suffix); a
    fixed block as it is."""
    if not getattr(block, "is_supernet", False):
        if path is not None:
            raise ConfigError(f"a path {tuple(path)} was given for a fixed (non-supernet) block")
        return block
    if path is None:
        raise ConfigError("a supernet block needs a path (one choice per cell) to be exported")
    block.set_path(tuple(path))  # validates it
    return nn.Sequential(block.prefix, *(cell[c] for cell, c in zip(block.cells, path)), block.suffix)


def stitch(blocks: Sequence[nn.Module], paths: Sequence[Sequence[int] | None]) -> nn.Sequential:
    """The student blocks chained into one network, each supernet block reduced to its path."""
    if len(paths) != len(blocks):
        raise ConfigError(f"{len(paths)} paths for {len(blocks)} blocks: give one per block (None for a fixed one)")
    return nn.Sequential(*(_fixed(b, p) for b, p in zip(blocks, paths)))


def _architecture_paths(payload: dict, blocks: Sequence[nn.Module], *, paths: Sequence | None,
                        budget: float | None) -> tuple[list, dict]:
    """The path per block to export, and how it was chosen (recorded in student.json)."""
    supernet = [getattr(b, "is_supernet", False) for b in blocks]
    if not any(supernet):
        if paths is not None or budget is not None:
            raise ConfigError(f"{payload['workload']} has no supernet: --paths and --budget do not apply")
        return [None] * len(blocks), {}
    if paths is not None:
        return list(paths), {"chosen_by": "--paths"}
    from .search import search_run

    found = search_run(os.path.dirname(os.path.dirname(payload["path"])), payload["run_id"], budget=budget)
    return list(found.paths), {"chosen_by": "search", "budget": budget, "summed_heldout_loss": found.loss}


def export_student(run: str, out_dir: str, *, results: str = "results", paths: Sequence | None = None,
                   budget: float | None = None, recalibrate: bool = True) -> dict:
    """Write ``out_dir/model.safetensors`` and ``out_dir/student.json`` for run ``run``'s student
    (see the module docstring); returns the JSON written."""
    from safetensors.torch import save_file

    from .fileio import atomic_write_text

    payload = read_students(run, results)
    if payload["workload"].startswith("llm-"):
        net, chosen, how = _assembled(payload, budget)
    else:
        blocks = list(load_saved(payload).student)
        chosen, how = _architecture_paths(payload, blocks, paths=paths, budget=budget)
        net = stitch(blocks, chosen)
        how["batchnorm"] = _recalibrated(net, payload.get("data")) if recalibrate else "as trained (--no-recalibrate)"
    spec = {"format": EXPORT_FORMAT, "workload": payload["workload"], "options": payload["options"],
            "paths": [None if p is None else [int(c) for c in p] for p in chosen],
            "parameters": sum(p.numel() for p in net.parameters()), "source_run": payload["run_id"],
            "metrics": payload.get("metrics", {}), **how}
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    tmp = os.path.join(out_dir, f".{WEIGHTS_FILE}.tmp")
    save_file(tensors, tmp, metadata={"format": EXPORT_FORMAT})
    os.replace(tmp, os.path.join(out_dir, WEIGHTS_FILE))  # the JSON (written last) names a complete file
    atomic_write_text(os.path.join(out_dir, SPEC_FILE), json.dumps(spec, indent=1) + "\n")
    return spec


def _recalibrated(net: nn.Module, data: str | None) -> str:
    """Recalibrate ``net``'s BatchNorm statistics on ``data``'s training split, as the run's
    ``student_top1`` was scored; what was done, for ``student.json``."""
    from .quality import SPLITS, recalibrate_bn

    if data not in SPLITS:
        return f"as trained (the run's data {data or 'unrecorded'} has no training split to recalibrate on)"
    images = SPLITS[data]("train")[0]
    if not recalibrate_bn([net], images):
        return "none in this network"
    return f"recalibrated on the {len(images):,} training images of {data}"


def load_student(directory: str) -> nn.Sequential:
    """The exported student of ``directory`` as a plain ``nn.Sequential`` (strict key match)."""
    from safetensors.torch import load_file

    spec_path = os.path.join(directory, SPEC_FILE)
    if not os.path.isfile(spec_path):
        raise FileNotFoundError(f"{directory} has no {SPEC_FILE}: export a student there first "
                                f"(python -m pipebd export RUN --out {directory})")
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{spec_path}: format {spec.get('format')!r}, expected {EXPORT_FORMAT!r}")
    workload = _build(spec["workload"], spec["options"])
    if "choice" in spec:  # an assembled decoder student
        from .assembly import AssembledLM

        net = AssembledLM(workload, spec["choice"])
    else:
        net = stitch(list(workload.student), spec["paths"])
    net.load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE)), strict=True)
    return net


def _parse_paths(text: str | None) -> list | None:
    """``--paths "0,3|1,6|-|2,0|4"``: one comma-separated choice list per block, ``|`` between blocks,
    ``-`` for a fixed block."""
    if text is None:
        return None
    try:
        return [None if b.strip() == "-" else [int(c) for c in b.split(",")] for b in text.split("|")]
    except ValueError:
        raise ConfigError(f"--paths {text!r}: give one comma-separated list of choice indices per block, '|' "
                          "between blocks, '-' for a fixed block (e.g. 0,3|1,6|2,0|4,6|5)") from None


def _cmd_export(args) -> int:
    spec = export_student(args.run, args.out, results=args.results, paths=_parse_paths(args.paths),
                          budget=args.budget, recalibrate=args.recalibrate)
    top1 = spec["metrics"].get("student_top1")
    print(f"exported the student of run {spec['source_run']} ({spec['workload']}, {spec['parameters']:,} parameters"
          + (f", test top-1 {100 * top1:.1f} %" if isinstance(top1, float) else "") + f") to {args.out}/"
          f"{WEIGHTS_FILE} + {SPEC_FILE}; load it with pipebd.load_student({args.out!r})")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("export", help="write a run's stitched student (safetensors + JSON) for use outside pipebd",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN", help="a run id (saved with --save-students under --results) or its students file")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write model.safetensors and student.json")
    p.add_argument("--results", default="results", metavar="DIR", help="the run's results directory (default results)")
    p.add_argument("--budget", type=float, default=None,
                   help="NAS: the searched architecture's parameter budget (as `search --budget`)")
    p.add_argument("--paths", default=None, help="NAS: the paths to export instead of searching, e.g. 0,3|1,6|2,0|4,6|5")
    p.add_argument("--no-recalibrate", dest="recalibrate", action="store_false",
                   help="keep the BatchNorm statistics as trained (default: recalibrated on the run's training "
                        "split when it has one, as its student_top1 was scored)")
    p.set_defaults(func=_cmd_export)
