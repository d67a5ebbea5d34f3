"""Soak: 500 mixed requests from 32 concurrent openai clients against a real `llmft serve` process.

Every request gets the answer its kind calls for (a completion, a stream, a 400 or 404, a client-side timeout),
none is lost or reset, the server's own counters agree, and its resident memory after the run is where it was
after the warm-up.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.models.tiny import build_model, build_tokenizer

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KEY = "soak-key"
CLIENTS, REQUESTS, WARMUP = 32, 500, 100


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("soak-model")
    tokenizer = build_tokenizer()
    build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2), tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    command = [sys.executable, "-m", "llm_finetuning.cli.main", "serve", str(directory), "--port", "0"]
    command += ["--model-id", "tiny", "--max-tokens", "16", "--context-length", "512", "--max-queue", "512"]
    env = {**os.environ, "LLMFT_API_KEY": KEY, "COLUMNS": "200"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "serving" in line and "http://" in line:
            url = line.split("http://")[1].split()[0].removesuffix("/v1")
            break
    else:
        pytest.fail("llmft serve did not start:\n" + "".join(lines))
    # Keep reading its log: a full pipe would block the server's logging, and with it the server.
    drain = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    drain.start()
    yield {"url": f"http://{url}", "pid": process.pid, "process": process}
    process.terminate()
    process.wait(timeout=30)
    drain.join(timeout=30)
    output = "".join(lines)
    assert "Traceback" not in output, output[-4000:]


def one(client, kind: str, index: int) -> str:
    """One request of `kind`; returns what came back, raising on anything unexpected."""
    prompt = f"request {index}: " + "word " * (index % 40)
    messages = [{"role": "user", "content": prompt}]
    if kind == "chat":
        reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1 + index % 16)
        assert reply.choices[0].finish_reason in ("stop", "length")
        return "ok"
    if kind == "n":
        reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, n=3, temperature=0.8)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        return "ok"
    if kind == "text":
        reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, stop=["e", "\n"], temperature=0)
        assert "e" not in reply.choices[0].text
        return "ok"
    if kind == "stream":
        chunks = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, stream=True)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] in ("stop", "length")
        return "ok"
    if kind == "bad":
        try:
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=10_000)
        except openai.BadRequestError:
            return "400"
    if kind == "missing":
        try:
            client.chat.completions.create(model="gpt-4", messages=messages, max_tokens=4)
        except openai.NotFoundError:
            return "404"
    if kind == "gone":  # gives up before its answer: the server cancels and goes on
        try:
            client.with_options(timeout=0.05).completions.create(model="tiny", prompt=prompt, max_tokens=16)
            return "ok"  # answered within 50 ms: also fine
        except openai.APITimeoutError:
            return "gone"
    raise AssertionError(f"{kind}: no expected outcome")


def test_500_mixed_requests_from_32_clients(server):
    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key=KEY, max_retries=0, timeout=120)
    kinds = ["chat"] * 5 + ["text"] * 3 + ["stream"] * 3 + ["n"] + ["bad", "missing", "gone"]
    plan = [random.Random(i).choice(kinds) for i in range(REQUESTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        warm = list(pool.map(lambda i: one(client, plan[i], i), range(WARMUP)))
        time.sleep(1)
        before = rss_mib(server["pid"])
        rest = list(pool.map(lambda i: one(client, plan[i], i), range(WARMUP, REQUESTS)))
    time.sleep(1)
    after = rss_mib(server["pid"])
    outcomes = warm + rest
    assert len(outcomes) == REQUESTS  # pool.map re-raises the first failure: none was lost or reset
    expected = {"bad": "400", "missing": "404"}
    assert all(o == expected.get(k, o) for k, o in zip(plan, outcomes, strict=True))
    assert server["process"].poll() is None
    # Memory flat: the last 400 requests add no more than a little allocator noise to the warmed-up server.
    assert after - before < max(25.0, 0.05 * before), (before, after)
    assert requests_counted(server["url"]) == REQUESTS  # the server saw each one end, cancelled ones too


def requests_counted(url: str) -> float:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("llmft_requests_total{") and "/v1/" in line and "/v1/models" not in line
    )
