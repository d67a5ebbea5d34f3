"""Serving throughput and latency of `llmft serve` under 1 to 64 concurrent openai clients.

The server runs as users start it (`llmft serve MODEL --port 0`, its own process, an API key from the
environment); the clients are threads of this process, each with its own openai client, sending streaming chat
requests built from real Alpaca instructions, 8 per client and at least 16 (greedy, `max_tokens` 64, usage
reported in the last chunk).

For every level of concurrency the figures are: completion tokens/s over the level's wall time (the tokens the
server reported in `usage`), the ratio to one client, p50/p99 latency of a whole request, p50/p99 time to the
first content chunk, and errors by type. One more row runs the 32-client level against a server started with
`--max-batch-size 1`: the same engine without batching, the baseline batching is measured against.

The model is bench_train's `tiny` Llama shape (hidden 256, 4 layers, the Mistral-7B v0.3 tokenizer of
../shared/data) with random weights, float32, on the CPU.

    python benchmarks/bench_serve.py                      # levels 1 8 32 64
    python benchmarks/bench_serve.py --levels 1 32 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from bench_train import REPO, SHARED, load_tokenizer, model_dir  # noqa: E402

KEY = "bench-serve-key"
ALPACA = SHARED / "alpaca" / "alpaca_sample2000.alpaca_small.json"


@dataclass
class Level:
    """One level of concurrency against one server."""

    name: str
    clients: int
    requests: int
    max_batch_size: int
    wall_s: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    latencies_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def prompts(count: int) -> list[str]:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    texts = [(row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")).strip() for row in rows]
    return [texts[i % len(texts)] for i in range(count)]


class Server:
    """`llmft serve` as a child process; its output is drained so a full pipe never blocks its logging."""

    def __init__(self, model: Path, max_batch_size: int, max_tokens: int) -> None:
        command = [sys.executable, "-m", "llm_finetuning.cli.main", "serve", str(model), "--port", "0"]
        command += ["--model-id", "bench", "--max-tokens", str(max_tokens), "--context-length", "2048"]
        command += ["--max-batch-size", str(max_batch_size), "--max-queue", "1024"]
        env = {**os.environ, "LLMFT_API_KEY": KEY, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "serving" in line and "http://" in line:
                self.url = "http://" + line.split("http://")[1].split()[0]
                break
        else:
            raise RuntimeError("llmft serve did not start:\n" + "".join(self.lines))
        self.drain = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.drain.start()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.drain.join(timeout=30)


def one_request(client: Any, prompt: str, max_tokens: int, level: Level, lock: threading.Lock) -> None:
    start = time.perf_counter()
    first = None
    usage = None
    try:
        stream = client.chat.completions.create(
            model="bench",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage
    except Exception as error:  # every failure is counted by its type, none stops the level
        with lock:
            kind = type(error).__name__
            level.errors[kind] = level.errors.get(kind, 0) + 1
        return
    end = time.perf_counter()
    with lock:
        level.latencies_s.append(end - start)
        if first is not None:
            level.ttft_s.append(first - start)
        if usage is not None:
            level.completion_tokens += usage.completion_tokens
            level.prompt_tokens += usage.prompt_tokens
        else:
            level.errors["no usage"] = level.errors.get("no usage", 0) + 1


def run_level(server: Server, level: Level, texts: list[str], max_tokens: int) -> Level:
    import openai

    clients = [
        openai.OpenAI(base_url=server.url, api_key=KEY, timeout=600, max_retries=0) for _ in range(level.clients)
    ]
    lock = threading.Lock()
    start = time.perf_counter()
    with ThreadPoolExecutor(level.clients) as pool:
        futures = [
            pool.submit(one_request, clients[i % level.clients], texts[i], max_tokens, level, lock)
            for i in range(level.requests)
        ]
        for future in futures:
            future.result()
    level.wall_s = time.perf_counter() - start
    for client in clients:
        client.close()
    return level


def summary(level: Level, single: Level | None) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "name": level.name,
        "clients": level.clients,
        "requests": level.requests,
        "max_batch_size": level.max_batch_size,
        "completion_tokens": level.completion_tokens,
        "prompt_tokens": level.prompt_tokens,
        "wall_s": round(level.wall_s, 2),
        "completion_tokens_per_s": round(level.tokens_per_s, 1),
        "vs_1_client": round(level.tokens_per_s / single.tokens_per_s, 2) if single and single.tokens_per_s else None,
        "latency_p50_ms": ms(percentile(level.latencies_s, 50)),
        "latency_p99_ms": ms(percentile(level.latencies_s, 99)),
        "ttft_p50_ms": ms(percentile(level.ttft_s, 50)),
        "ttft_p99_ms": ms(percentile(level.ttft_s, 99)),
        "answered": len(level.latencies_s),
        "errors": dict(level.errors),
    }


def markdown(info: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {harness.machine_line(info)}",
        "",
        f"Model: bench_train's `tiny` Llama shape (random weights, float32, CPU); streaming chat, greedy, "
        f"max_tokens {args.max_tokens}, prompts from Alpaca.",
        "",
        "| clients | requests | batch limit | completion tokens/s | vs 1 client | p50 latency | p99 latency "
        "| p50 TTFT | p99 TTFT | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "0"
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['max_batch_size']} | {row['completion_tokens_per_s']:,.0f} "
            f"| {row['vs_1_client'] if row['vs_1_client'] is not None else '-'} "
            f"| {row['latency_p50_ms']:,.0f} ms | {row['latency_p99_ms']:,.0f} ms "
            f"| {row['ttft_p50_ms']:,.0f} ms | {row['ttft_p99_ms']:,.0f} ms | {errors} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=32, help="The server's batch limit.")
    parser.add_argument("--unbatched", type=int, default=32, help="Clients of the --max-batch-size 1 row (0: none).")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve-cpu-tiny")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "llmft-bench-models")
    args = parser.parse_args()

    info = harness.machine()
    model = model_dir("tiny", load_tokenizer(), torch.float32, args.cache)
    texts = prompts(max(16, 8 * max([*args.levels, args.unbatched])))
    levels: list[Level] = []
    tracebacks = 0
    server = Server(model, args.max_batch_size, args.max_tokens)
    try:
        run_level(server, Level("warm-up", 4, 8, args.max_batch_size), texts, args.max_tokens)
        for clients in args.levels:
            level = Level(f"{clients} clients", clients, max(16, 8 * clients), args.max_batch_size)
            levels.append(run_level(server, level, texts, args.max_tokens))
            print(f"{level.name}: {level.tokens_per_s:,.0f} completion tokens/s, errors {level.errors}", flush=True)
    finally:
        server.close()
        tracebacks += sum("Traceback" in line for line in server.lines)
    if args.unbatched:
        server = Server(model, 1, args.max_tokens)
        try:
            run_level(server, Level("warm-up", 2, 4, 1), texts, args.max_tokens)
            level = Level(f"{args.unbatched} clients, no batching", args.unbatched, 4 * args.unbatched, 1)
            levels.append(run_level(server, level, texts, args.max_tokens))
            print(f"{level.name}: {level.tokens_per_s:,.0f} completion tokens/s, errors {level.errors}", flush=True)
        finally:
            server.close()
            tracebacks += sum("Traceback" in line for line in server.lines)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    single = next((level for level in levels if level.clients == 1 and level.max_batch_size > 1), None)
    rows = [summary(level, single) for level in levels]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()}, "results": rows}
    payload["server_tracebacks"] = tracebacks
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    table = markdown(info, rows, args)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    # Per-level raw latencies are kept too, for anyone who wants other percentiles.
    raw = {level.name: {"latencies_s": level.latencies_s, "ttft_s": level.ttft_s} for level in levels}
    args.out.with_name(args.out.name + "-raw.json").write_text(json.dumps(raw) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
