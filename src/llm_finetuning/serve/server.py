"""`llmft serve`: the OpenAI-compatible application (serve/app.py) on uvicorn, bound before it serves.

`create_server` binds the socket (so port 0 gives a free port to read back), `serve_forever` runs uvicorn until
`shutdown`, `server_close` stops the engine and closes the socket. Binding anything but loopback requires an API
key.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

import uvicorn

from llm_finetuning.errors import UserError
from llm_finetuning.serve.app import create_app
from llm_finetuning.serve.encoders import EncoderEngine
from llm_finetuning.serve.engine import Engine, ServedModel
from llm_finetuning.serve.keys import ApiKeys
from llm_finetuning.serve.pool import EnginePool
from llm_finetuning.serve.protocol import ServerLimits

__all__ = ["EncoderEngine", "Engine", "Server", "ServedModel", "ServerLimits", "create_server"]

logger = logging.getLogger(__name__)

BACKLOG = 2048  # the kernel's accept queue: bursts of connections wait there instead of being reset


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Server:
    def __init__(
        self,
        engine: Engine | EncoderEngine | EnginePool,
        host: str,
        port: int,
        api_key: str | ApiKeys | None,
        limits: ServerLimits,
        extend: Any = None,
    ) -> None:
        self.engine = engine
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
        self.socket.listen(BACKLOG)
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(
            create_app(engine, api_key, limits, extend),
            log_config=None,  # the project's logging; one access line per request from the app
            access_log=False,
            lifespan="off",
            backlog=BACKLOG,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        self._uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until `shutdown` (or Ctrl-C when called from the main thread)."""
        self._stopped.clear()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 15.0) -> None:
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.engine.close()
        self.socket.close()


def create_server(
    engine: Engine | EncoderEngine | EnginePool,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | ApiKeys | None = None,
    limits: ServerLimits | None = None,
    extend: Any = None,
) -> Server:
    """The server, bound but not yet serving (call `serve_forever`). Non-loopback hosts need an API key.

    The server owns the engine: when it cannot be created, the engine is closed (its worker thread would
    otherwise keep the model alive for the rest of the process)."""
    try:
        if not is_loopback(host) and not api_key:
            raise UserError(
                f"serving on {host} (beyond this machine) needs an API key: pass --api-key or LLMFT_API_KEY"
            )
        return Server(engine, host, port, api_key, limits or ServerLimits(), extend)
    except BaseException:
        engine.close()
        raise
