"""``ls-paper``: the layer-wise baseline with the authors' fixed block map (one file, nothing else).

Pipe-BD's released code (Jang et al., DATE 2023) runs its layer-wise baseline on exactly 4
devices and the 6 blocks of its NAS/compression workloads with a hand-written map: rank 0 →
block 0, rank 1 → block 1, rank 2 → blocks 2–3, rank 3 → blocks 4–5 — no cost model. This is
that baseline, next to ``ls`` (the same schedule, balanced by profiled cost), so the two can be
compared side by side; other shapes are refused before anything starts.
"""

from __future__ import annotations

from baselines.ls import LayerWise
from pipebd.config import ConfigError, RunConfig
from pipebd.strategies import register_strategy

PAPER_MAP = [[0], [1], [2, 3], [4, 5]]


def _check(devices: int, num_blocks: int) -> list[list[int]]:
    if (devices, num_blocks) != (4, 6):
        raise ConfigError(f"strategy 'ls-paper' is the authors' fixed map for 4 devices and 6 blocks "
                          f"([0],[1],[2,3],[4,5]); got --devices {devices} and a workload of {num_blocks} blocks. "
                          "Use --devices 4 with a 6-block workload (nas-*, compress-*), or 'ls' for any shape")
    return PAPER_MAP


@register_strategy("ls-paper")
class LayerWisePaper(LayerWise):
    description = "layer-wise with the authors' fixed map (4 devices, 6 blocks: 0 | 1 | 2,3 | 4,5)"

    @classmethod
    def layout(cls, cfg: RunConfig, num_blocks: int) -> list[list[int]]:
        return _check(cfg.devices, num_blocks)

    @classmethod
    def choose_layout(cls, costs, spec, *, memory_limit_bytes=None) -> list[list[int]]:
        return _check(spec.devices, spec.num_blocks)
