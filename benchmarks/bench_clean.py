"""Throughput of the data-cleaning steps on real text, on one CPU core.

    .venv/bin/python benchmarks/bench_clean.py [--repeat 3] [--data ../shared/data] [--markdown]

Text is Alpaca (2000-record sample) plus GSM8K train, each record's text as `default_text_of` gives it;
MB/s counts the UTF-8 bytes of that text. Each step is timed from cold (fresh hashers) and the best of
`--repeat` runs is reported.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from llm_finetuning.data.clean import CleanConfig, clean_records, default_text_of  # noqa: E402
from llm_finetuning.data.clean.config import ALL_PII_TYPES, NearDedupConfig  # noqa: E402
from llm_finetuning.data.clean.decontaminate import EvalIndex, contaminated  # noqa: E402
from llm_finetuning.data.clean.exact import exact_duplicates  # noqa: E402
from llm_finetuning.data.clean.minhash import band_shape, near_duplicates  # noqa: E402
from llm_finetuning.data.clean.pii import redact_value  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores visible; Python {platform.python_version()}, 1 core used"


def load(data: Path) -> tuple[list[dict], list[str]]:
    alpaca = json.loads((data / "alpaca" / "alpaca_sample2000.alpaca_small.json").read_text())
    gsm8k = [json.loads(line) for line in (data / "gsm8k" / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(line)["question"] for line in (data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    return alpaca + gsm8k, evals


def best_time(work: Callable[[], object], repeat: int) -> tuple[float, object]:
    """The fastest of `repeat` runs of `work`, and what the last one returned."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def one_core_parser(description: str) -> argparse.ArgumentParser:
    """The options of the one-core data benchmarks: --repeat, --data (../shared/data) and --markdown."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LLMFT_SHARED_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return parser


def pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def main(argv: list[str] | None = None) -> None:
    args = one_core_parser(__doc__.splitlines()[0]).parse_args(argv)
    pin_one_core()

    records, evals = load(args.data)
    texts = [default_text_of(record) for record in records]
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    everything = CleanConfig()
    cases: list[tuple[str, Callable[[], object]]] = []
    for backend in ("rensa", "numpy"):
        near = NearDedupConfig(backend=backend)
        bands, rows = band_shape(near)
        cases.append((
            f"near-dedup ({backend}): MinHash word {near.ngram}-grams, {near.num_perm} perm, LSH {bands}x{rows}",
            lambda near=near: near_duplicates(texts, near),
        ))  # fmt: skip
    cases += [
        ("exact dedup (NFKC, casefold, whitespace)", lambda: exact_duplicates(texts)),
        ("PII redaction, all 6 types, every field", lambda: [redact_value(r, ALL_PII_TYPES) for r in records]),
        (
            f"decontamination: 13-grams vs GSM8K test ({len(evals)} questions)",
            lambda: contaminated(texts, EvalIndex(evals, 13), 1),
        ),
        ("clean_records, all steps", lambda: clean_records(records, everything, eval_texts=evals)),
    ]
    results = [(name, best_time(work, args.repeat)[0]) for name, work in cases]

    header = f"{len(records)} records (Alpaca 2000 + GSM8K train), {megabytes:.2f} MB of text"
    print(f"Machine: {machine()}\n{header}\n")
    if args.markdown:
        print("| step | seconds | MB/s |\n|---|---:|---:|")
        for name, seconds in results:
            print(f"| {name} | {seconds:.3f} | {megabytes / seconds:.1f} |")
    else:
        width = max(len(name) for name, _ in results)
        print(f"{'step':<{width}}  {'seconds':>8}  {'MB/s':>7}")
        for name, seconds in results:
            print(f"{name:<{width}}  {seconds:8.3f}  {megabytes / seconds:7.1f}")


if __name__ == "__main__":
    main()
