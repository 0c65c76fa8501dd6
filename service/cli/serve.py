"""`rewardserve serve [PATH_OR_HUB_ID ...]`: the server, with the models given on the command
line in place of the configured ones, saying where it listens and how each model loaded. The
mistakes a first run makes (a config typo, a busy port) end in one short line, not a
traceback, unless --debug asks for one; a model that fails says why on its status line."""

from __future__ import annotations

import errno
import logging
import re
import socket
import sys
from pathlib import Path

from pydantic import ValidationError

from models.hub import HUB_ID, is_hub_id
from service.app import DrainingServer, create_app
from service.cli.scoring import cli_settings

UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
SHOWN_CONFIG_ERRORS = 2


class PortInUse(OSError):
    """A port another process listens on."""


def default_name(path: str) -> str:
    """A model's name from where it is: the directory's last part, an embedded model's or hub
    repository's name, with what a model name may not hold replaced by '-'."""
    if path.startswith("builtin:"):
        last = path.removeprefix("builtin:")
    elif is_hub_id(path):
        last = HUB_ID.match(path)["repo"].rsplit("/", 1)[-1]
    else:
        last = Path(path).expanduser().resolve().name
    return UNSAFE_NAME_CHARS.sub("-", last).lstrip("._-")[:64] or "model"


def served_models(paths: list[str], names: list[str] | None) -> list[dict] | None:
    """The command line's models ({name, path}), or None to serve the configured ones."""
    if names and len(names) != len(paths):
        sys.exit(f"rewardserve serve: {len(names)} --name for {len(paths)} model paths; give one name per path")
    if not paths:
        return None
    return [{"name": name, "path": path} for path, name in zip(paths, names or map(default_name, paths))]


def listening_socket(host: str, port: int, flag: str) -> socket.socket:
    """`host:port` bound and listening, taken before anything loads so a busy port is said at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use: pass {flag} or stop what holds it") from err
        raise


def config_error(err: ValidationError) -> str:
    """The first errors of a settings validation, each naming its key and what is wrong."""
    def line(error: dict) -> str:
        key = ".".join(str(part) for part in error["loc"]) or "config"
        what = "unknown key (docs/configuration.md lists every key)" if error["type"] == "extra_forbidden" \
            else error["msg"].removeprefix("Value error, ")
        return f"config: {key}: {what}"

    errors = err.errors()
    shown = [line(error) for error in errors[:SHOWN_CONFIG_ERRORS]]
    more = len(errors) - SHOWN_CONFIG_ERRORS
    return "\n".join(shown) + (f"\n... and {more} more (--debug shows them all)" if more > 0 else "")


class AnnouncingServer(DrainingServer):
    """The server, printing where it listens once it does, and each model's status once loading ends."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        state, settings = self.app.state, self.app.state.settings
        scheme = "https" if settings.tls.cert_file is not None else "http"
        host, port = sockets[0].getsockname()[:2]  # run with the HTTP socket serve() bound
        grpc = f"gRPC on {settings.server.host}:{state.grpc_port}" if settings.server.grpc_port else "gRPC off"
        print(f"rewardserve: listening on {scheme}://{host}:{port}, {grpc}", flush=True)
        state.loading.add_done_callback(lambda done: done.cancelled() or self.report_models())

    def report_models(self) -> None:
        for name, runner in self.app.state.registry.runners.items():
            status = runner.status if runner.error is None else f"{runner.status}: {' '.join(runner.error.split())}"
            print(f"model {name} {status}", flush=True)


def serve(args) -> None:
    try:
        settings = cli_settings(args, models=served_models(args.paths, args.name))
        http = listening_socket(settings.server.host, settings.server.port, "--port")
        if settings.server.grpc_port:
            listening_socket(settings.server.host, settings.server.grpc_port, "--grpc-port").close()
    except (ValidationError, FileNotFoundError, PortInUse) as err:
        if args.debug:
            raise
        sys.exit("rewardserve: " + (config_error(err) if isinstance(err, ValidationError) else str(err)))
    logging.basicConfig(level="DEBUG" if args.debug else settings.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    AnnouncingServer(create_app(settings), settings).run(sockets=[http])
