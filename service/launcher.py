"""The `rewardserve` command's entry point. The command runs the server, whose dependencies
are the `serve` extra (a plain install is the client alone); where they are missing it says
so in one line instead of a traceback."""

from __future__ import annotations

import importlib.util
import sys

SERVER_PACKAGES = ("torch", "transformers", "fastapi", "uvicorn")
INSTALL_SERVER = "pip install 'rewardserve[serve]'"


def main() -> None:
    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"rewardserve: the server's dependencies are not installed ({', '.join(missing)}); "
                 f"install them with: {INSTALL_SERVER}")
    from service.cli import main as cli_main

    cli_main()
