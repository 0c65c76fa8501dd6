"""The `rewardserve` console script as tests run it in a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def rewardserve_command() -> list[str]:
    """The venv's console script (else the package's __main__)."""
    script = Path(sys.executable).with_name("rewardserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without REWARDSERVE_* settings that could leak in, offline, and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDSERVE_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
