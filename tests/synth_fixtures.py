"""A scripted OpenAI-compatible teacher on 127.0.0.1: `policy(messages, count)` writes each reply, where `count`
is how many times this exact conversation was asked before (so n samples of one prompt can differ). Replies
carry `usage` with one token per word, so the token counts of a run can be checked exactly."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Policy = Callable[[list[dict[str, str]], int], str]


def words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


class ScriptedTeacher:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.requests: list[list[dict[str, str]]] = []
        self.seen: Counter = Counter()
        self.prompt_tokens = self.completion_tokens = 0
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messages = body["messages"]
                key = json.dumps(messages, sort_keys=True)
                with teacher.lock:
                    count = teacher.seen[key]
                    teacher.seen[key] += 1
                    teacher.requests.append(messages)
                reply = teacher.policy(messages, count)
                usage = {"prompt_tokens": words(messages), "completion_tokens": len(reply.split())}
                with teacher.lock:
                    teacher.prompt_tokens += usage["prompt_tokens"]
                    teacher.completion_tokens += usage["completion_tokens"]
                data = json.dumps(
                    {
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
                        "usage": usage,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def teacher(self, **options: Any) -> dict[str, Any]:
        """The `teacher:` section of a generation config pointing here (no key, no cache unless asked)."""
        return {"base_url": self.base_url, "model": "scripted", "api_key_env": None, "cache": False, **options}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ScriptedTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
