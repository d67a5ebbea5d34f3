"""Peak memory of continual pretraining as the corpus grows: in-memory blocks vs `data.streaming`.

    .venv/bin/python benchmarks/bench_stream_memory.py [--scales 1 10] [--megabytes 2] [--data ../shared/data]

The corpus is GSM8K train plus the Alpaca sample as raw text documents, repeated to `--megabytes` x scale MB,
in shards of about 1 MB (JSONL). Each run trains a tiny model (byte-level tokenizer, blocks of 256 tokens,
batch 32) for as many steps as the corpus has batches, so every document is read, in its own process; the
peak resident memory of that process (its own ru_maxrss) is reported, with the tokens trained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK, BATCH = 256, 32

RUNNER = """
import resource, sys, yaml
from llm_finetuning.config import Config
from llm_finetuning.train import train
config = Config.model_validate(yaml.safe_load(open(sys.argv[1])))
assert train(config).status == "completed"
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def documents(data: Path) -> list[str]:
    gsm8k = [json.loads(line) for line in (data / "gsm8k" / "train.jsonl").read_text().splitlines()]
    alpaca = json.loads((data / "alpaca" / "alpaca_sample2000.alpaca_small.json").read_text())
    texts = [row["question"] + "\n" + row["answer"] for row in gsm8k]
    texts += ["\n".join(v for v in row.values() if isinstance(v, str) and v) for row in alpaca]
    return texts


def write_corpus(folder: Path, texts: list[str], megabytes: float) -> int:
    """Shards of about 1 MB until `megabytes` of text; returns the bytes of text written."""
    folder.mkdir(parents=True)
    written, shard, lines, index = 0, 0, [], 0
    while written < megabytes * 1e6:
        text = texts[index % len(texts)]
        index += 1
        lines.append(json.dumps({"text": text}) + "\n")
        written += len(text.encode())
        if sum(map(len, lines)) >= 1e6:
            (folder / f"part-{shard:05d}.jsonl").write_text("".join(lines))
            shard, lines = shard + 1, []
    if lines:
        (folder / f"part-{shard:05d}.jsonl").write_text("".join(lines))
    return written


def run(folder: Path, output: Path, streaming: bool, steps: int) -> tuple[float, float]:
    config = {
        "model": {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}},
        "adapter": {"method": "full"},
        "method": {"name": "pretrain"},
        "data": {"train": {"path": str(folder), "format": "text"}, "max_length": BLOCK, "streaming": streaming},
        "training": {"max_steps": steps, "per_device_batch_size": BATCH, "logging_steps": 50, "save_steps": 10**6},
        "output_dir": str(output),
    }
    if not streaming:  # the in-memory path reads one file: the shards joined
        joined = folder.with_suffix(".jsonl")
        if not joined.exists():
            joined.write_text("".join(p.read_text() for p in sorted(folder.glob("*.jsonl"))))
        config["data"]["train"]["path"] = str(joined)
    path = output.with_suffix(".yaml")
    path.write_text(json.dumps(config))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, str(path)], check=True, capture_output=True, text=True)
    peak = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_KIB"))
    return peak / 1024, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--megabytes", type=float, default=2.0)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LLMFT_SHARED_DATA", REPO.parent / "shared" / "data"))
    )
    args = parser.parse_args(argv)
    texts = documents(args.data)
    print(f"Machine: {platform.processor() or 'CPU'}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print("| corpus | path | tokens trained | peak RSS (MiB) | seconds |\n|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        for scale in sorted(args.scales):
            folder = root / f"corpus-{scale}x"
            size = write_corpus(folder, texts, args.megabytes * scale)
            steps = max(1, size // BLOCK // BATCH - 1)  # byte-level: about one token per byte
            for streaming in (True, False):  # each in a fresh process, which reports its own peak
                name = "streaming" if streaming else "in memory"
                peak, seconds = run(folder, root / f"run-{scale}-{name.replace(' ', '-')}", streaming, steps)
                tokens = steps * BATCH * BLOCK
                corpus = f"{scale}x ({size / 1e6:.1f} MB)"
                print(f"| {corpus} | {name} | {tokens / 1e6:.1f} M | {peak:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
