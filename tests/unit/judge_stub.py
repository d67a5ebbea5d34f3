"""A scripted OpenAI-compatible endpoint on 127.0.0.1 for the judge tests (standard library `http.server`).

Each request takes the next scripted `Reply` (the last one repeats); the stub counts requests, remembers their
bodies and Authorization headers, and records how many were in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    content: str | None = '{"score": 4}'
    """Assistant text wrapped in a chat completion; None sends `raw` as the body instead."""
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (past the client's timeout: a timed-out attempt)."""


def chat_body(content: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    ).encode()


class Stub:
    def __init__(self) -> None:
        self.script: list[Reply] = [Reply()]
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.wait_for_peers = 0
        """When > 1, a request waits (up to 1 s) until this many are in flight: proves concurrency happens."""
        self.lock = threading.Condition()
        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that timed out closed the socket
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def play(self, *replies: Reply) -> None:
        self.script = list(replies)

    def _next(self, body: dict[str, Any], authorization: str | None) -> Reply:
        with self.lock:
            self.requests += 1
            self.bodies.append(body)
            self.authorizations.append(authorization)
            reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.lock.notify_all()
            if self.wait_for_peers > 1:
                self.lock.wait_for(lambda: self.in_flight >= self.wait_for_peers, timeout=1.0)
        return reply

    def _done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                reply = stub._next(body, self.headers.get("Authorization"))
                if reply.delay:
                    stub.released.wait(reply.delay)
                # No longer in flight before the client can see the reply and send its next request.
                stub._done()
                payload = chat_body(reply.content) if reply.content is not None else reply.raw
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def __enter__(self) -> Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition, timeout: float = 5.0) -> bool:
    """Poll `condition` until true (for server-side effects that trail the client's return)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
