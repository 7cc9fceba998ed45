"""Test plugin (``--plugin tests.flaky_strategy``): a strategy ``flaky`` that trains like
``dp`` but fails validation while ``PIPEBD_FLAKY_FAIL=1`` — a run that fails once and
succeeds when retried, for the experiment runner's retry-only-the-failed test."""

from __future__ import annotations

import os

from baselines.dp import DataParallel
from pipebd.config import ConfigError
from pipebd.strategies import register_strategy


@register_strategy("flaky")
class Flaky(DataParallel):
    description = "test only: dp, failing while PIPEBD_FLAKY_FAIL=1"

    @classmethod
    def validate(cls, cfg, num_blocks):
        if os.environ.get("PIPEBD_FLAKY_FAIL") == "1":
            raise ConfigError("flaky: failing on purpose (PIPEBD_FLAKY_FAIL=1)")
        super().validate(cfg, num_blocks)
