"""Tokenization with completion masks through the data pipeline, in tokens per second on one core.

    RAYON_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tokenize.py

Real text from ../shared/data (Alpaca 2000-sample, GSM8K train) with the real Qwen2 tokenizer and the project's
byte-level tokenizer. The baseline in the same run is plain `tokenizer(texts)` on the same rendered texts
(no template, no mask), so the ratio shows what masking costs.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core: the figure is per core
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness import cpu_name  # noqa: E402  (benchmarks/ is on the path when a script runs)
from transformers import AutoTokenizer  # noqa: E402

from llm_finetuning.config.schema import DataSource  # noqa: E402
from llm_finetuning.data.pipeline import SplitStats, load_records  # noqa: E402
from llm_finetuning.data.tokenize import encode  # noqa: E402
from llm_finetuning.models.loading import prepare_tokenizer  # noqa: E402
from llm_finetuning.models.tiny import build_tokenizer  # noqa: E402

SHARED = Path(os.environ.get("LLMFT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCES = {
    "alpaca-2000": DataSource(path=str(SHARED / "alpaca/alpaca_sample2000.alpaca_small.json"), format="alpaca"),
    "gsm8k-train": DataSource(
        path=str(SHARED / "gsm8k/train.jsonl"),
        format="prompt_completion",
        columns={"prompt": "question", "completion": "answer"},
    ),
}


def measure(tokenizer, conversations) -> tuple[float, float, int]:
    start = time.perf_counter()
    encoded = [encode(tokenizer, c) for c in conversations]
    masked = time.perf_counter() - start
    tokens = sum(len(e.input_ids) for e in encoded)
    texts = [e.text for e in encoded]
    start = time.perf_counter()
    for text in texts:
        tokenizer(text, add_special_tokens=False)
    plain = time.perf_counter() - start
    return tokens / masked, tokens / plain, tokens


def main() -> None:
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, python {platform.python_version()}; 1 thread")
    qwen = AutoTokenizer.from_pretrained(SHARED / "tokenizers/qwen2")
    prepare_tokenizer(qwen, None)
    builtin = build_tokenizer()
    print(f"{'data':<12} {'tokenizer':<9} {'tokens':>9} {'masked tok/s':>13} {'plain tok/s':>12} {'ratio':>6}")
    for name, source in SOURCES.items():
        conversations = [r["messages"] for _, r in load_records(source, "fail", SplitStats(), "messages")]
        for label, tokenizer in (("qwen2", qwen), ("builtin", builtin)):
            masked, plain, tokens = measure(tokenizer, conversations)
            print(f"{name:<12} {label:<9} {tokens:>9} {masked:>13,.0f} {plain:>12,.0f} {masked / plain:>6.2f}")


if __name__ == "__main__":
    main()
