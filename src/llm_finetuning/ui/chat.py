"""The chat page's model server: `llmft serve` over a run (and its base), and streamed answers through the openai
client, the same server and client a team uses.

An adapter run is served as one server with two model ids, its base (`base`) and the run (named like the run,
`--adapter RUN=DIR`), batched together; a full or merged run has no adapter to switch off, so its base, where the run
names one that can be loaded, gets a second server. The server listens on 127.0.0.1 with a random API key that
only this process knows.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llm_finetuning.errors import UserError
from llm_finetuning.runs.rundir import RunDir
from llm_finetuning.serve.loading import _adapter_base, resolve

logger = logging.getLogger(__name__)
BASE_ID = "base"


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    ids: list[str]
    lines: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class ChatSession:
    """The servers answering one run's chat: the run's model id and, where there is one, its base's."""

    run: Path
    run_id: str
    key: str
    servers: dict[str, Server]
    """Model id -> the server that answers it."""

    @property
    def base_id(self) -> str | None:
        return BASE_ID if BASE_ID in self.servers else None

    def close(self) -> None:
        for server in {id(s): s for s in self.servers.values()}.values():
            server.close()


def serve_commands(run: Path, run_id: str) -> list[tuple[list[str], list[str]]]:
    """(`llmft serve` command line, model ids it serves) per server needed for `run` and its base."""
    run = Path(run)
    served = resolve(run)
    if not served.exists():
        raise UserError(f"{run}: no final/ model to chat with; only a completed run can be served")
    serve = [sys.executable, "-m", "llm_finetuning.cli.main", "serve"]
    common = ["--host", "127.0.0.1", "--port", "0"]
    base = _adapter_base(served)
    if base is not None:
        command = [*serve, base, "--model-id", BASE_ID, "--adapter", f"{run_id}={run}", *common]
        return [(command, [BASE_ID, run_id])]
    commands = [([*serve, str(run), "--model-id", run_id, *common], [run_id])]
    base_dir = RunDir(run).base
    if (base_dir / "config.json").is_file():
        commands.append(([*serve, str(base_dir), "--model-id", BASE_ID, *common], [BASE_ID]))
    return commands


def _start(command: list[str], ids: list[str], key: str, timeout: float = 300.0) -> Server:
    env = {**os.environ, "LLMFT_API_KEY": key, "COLUMNS": "200"}
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if not found and "serving" in line and "http://" in line:
                found.append("http://" + line.split("http://")[1].split()[0])
                ready.set()
        ready.set()  # the server ended before it served

    ready = threading.Event()
    threading.Thread(target=read, name="llmft-ui-serve-log", daemon=True).start()
    ready.wait(timeout)
    if not found:
        process.kill()
        raise UserError("llmft serve did not start: " + "".join(lines[-20:]).strip())
    return Server(process, found[0], ids, lines)


def start(run: Path) -> ChatSession:
    """Start the servers for `run` (and its base); the caller closes the session."""
    run = Path(run)
    run_id = run.name
    key = secrets.token_urlsafe(24)
    servers: dict[str, Server] = {}
    try:
        for command, ids in serve_commands(run, run_id):
            server = _start(command, ids, key)
            servers.update(dict.fromkeys(ids, server))
    except BaseException:
        for server in servers.values():
            server.close()
        raise
    return ChatSession(run, run_id, key, servers)


def stream(
    session: ChatSession,
    model: str,
    messages: list[dict[str, str]],
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 256,
) -> Iterator[str]:
    """The answer so far, after every streamed chunk."""
    import openai

    server = session.servers[model]
    client = openai.OpenAI(base_url=server.url, api_key=session.key, max_retries=0, timeout=600)
    try:
        chunks = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stream=True,
        )
        text = ""
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                yield text
    except openai.APIStatusError as exc:  # the server's own message (context too long, a bad setting)
        try:
            message = json.loads(exc.response.text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(exc)
        raise UserError(message) from None
    finally:
        client.close()


class Sessions:
    """One chat server set per run, shared by every browser tab, closed with the UI."""

    def __init__(self) -> None:
        self._open: dict[Path, ChatSession] = {}
        self._lock = threading.Lock()

    def open(self, run: Path) -> ChatSession:
        with self._lock:
            found = self._open.get(run)
            if found is not None and all(s.process.poll() is None for s in found.servers.values()):
                return found
            if found is not None:
                found.close()
            self._open[run] = start(run)
            return self._open[run]

    def get(self, run: Path) -> ChatSession | None:
        return self._open.get(run)

    def close(self) -> None:
        with self._lock:
            for session in self._open.values():
                session.close()
            self._open.clear()


def stream_both(
    session: ChatSession,
    targets: dict[str, str | None],
    history_run: list[dict[str, str]],
    history_base: list[dict[str, str]],
    temperature: float,
    top_p: float,
    max_tokens: int,
) -> Iterator[tuple[str, str, str | None]]:
    """Stream the run's and the base's answers at once: (which, text so far, error) as chunks come in."""
    events: queue.Queue = queue.Queue()
    histories = {"run": history_run, "base": history_base}

    def work(which: str) -> None:
        try:
            for text in stream(session, targets[which], histories[which], temperature, top_p, max_tokens):
                events.put((which, text, None))
        except UserError as exc:
            events.put((which, "", str(exc)))
        except Exception as exc:  # the server went away: say so in the chat, keep the UI
            events.put((which, "", f"{type(exc).__name__}: {exc}"))
        events.put((which, None, None))

    active = [w for w in ("run", "base") if targets[w]]
    for which in active:
        threading.Thread(target=work, args=(which,), daemon=True).start()
    left = len(active)
    while left:
        which, text, error = events.get()
        if text is None and error is None:
            left -= 1
            continue
        yield which, text, error
