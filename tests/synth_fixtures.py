"""A scripted OpenAI-compatible teacher on 127.0.0.1: `policy(messages, count)` writes each reply, where `count`
is how many times this exact conversation was asked before (so n samples of one prompt can differ). Replies
carry `usage` with one token per word, so the token counts of a run can be checked exactly. Also: `llmft serve`
started in its own process, for tests that use the project's server as the endpoint."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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


def start_llmft_serve(directory: str | Path, *args: str, env: dict[str, str] | None = None) -> tuple[Any, str]:
    """`llmft serve DIRECTORY` in its own process on a free loopback port; returns the process and its base URL
    (the caller terminates it). Its log keeps draining so that it never blocks on a full pipe."""
    import os
    import re
    import subprocess
    import sys
    import time

    import pytest

    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250", **(env or {})}
    command = [sys.executable, "-m", "llm_finetuning.cli.main", "serve", str(directory), "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    lines, url, deadline = [], None, time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        url = match.group(0) if match else None
    if url is None:
        process.kill()
        pytest.fail("llmft serve did not start:\n" + "".join(lines))
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, url


def save_fixed_reply_model(directory: str | Path, reply_text: str) -> None:
    """A causal LM that answers `reply_text` (no character twice) after any chat prompt, saved like a hub model.

    Its decoder layers write nothing to the residual stream (zero output projections), so the next-token logits
    depend on the current token only; its embeddings and output rows make the chain newline -> each character of
    the reply -> end-of-turn. The chat prompt ends with a newline, so greedy decoding gives the reply whatever the
    prompt holds: deterministic, no training."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_finetuning.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    reply = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    chain = newline + reply + [tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain)  # each token has one successor
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        embed = model.model.embed_tokens.weight
        for dim, (current, following) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            embed[current] = 0.0
            embed[current, dim] = 1.0  # orthogonal one-hot states: no successor competes with another
            model.lm_head.weight[following, dim] = 10.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
