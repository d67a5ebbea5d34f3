"""Near-dedup backends side by side: speed on one core and recall of planted near-duplicates.

    .venv/bin/python benchmarks/bench_near_dedup.py [--repeat 3] [--planted 500] [--data ../shared/data] [--markdown]

The corpus is Alpaca (2000-record sample) plus GSM8K train, each record's text as `default_text_of` gives it,
plus `--planted` copies of long records with a few words replaced, inserted, deleted or swapped (true 5-gram
Jaccard with their source between 0.8 and 1, computed exactly). A backend's recall is the share of planted
copies it removes as a duplicate of their source; every other removal is checked against the exact Jaccard of
the pair it names (at least the threshold: a genuine near-duplicate of the corpus; below it: a false removal).

Backends: `rensa` and `numpy` as `near_dedup.backend` runs them (tokenising, shingling, signatures, LSH and
verification), and, where installed, datasketch (MinHash.bulk of the same word 5-gram strings and MinHashLSH,
first kept) as the reference a user would otherwise reach for. MB/s counts the UTF-8 bytes of the texts.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import random  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from bench_clean import best_time, machine, one_core_parser, pin_one_core  # noqa: E402
from bench_clean import load as load_records  # noqa: E402

from llm_finetuning.data.clean import default_text_of  # noqa: E402
from llm_finetuning.data.clean.config import NearDedupConfig  # noqa: E402
from llm_finetuning.data.clean.minhash import band_shape, near_duplicates  # noqa: E402
from llm_finetuning.data.clean.text import words  # noqa: E402

NGRAM = 5


def load(data: Path) -> list[str]:
    records, _ = load_records(data)
    return [default_text_of(record) for record in records]


def grams(text: str) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + NGRAM]) for i in range(max(len(tokens) - NGRAM + 1, 1))} if tokens else set()


def jaccard(a: str, b: str) -> float:
    first, second = grams(a), grams(b)
    return len(first & second) / len(first | second) if first | second else 0.0


def plant(texts: list[str], count: int, threshold: float, seed: int = 0) -> dict[int, int]:
    """Append `count` edited copies of long texts; {copy position: source position}."""
    rng = random.Random(seed)
    long = [i for i, text in enumerate(texts) if len(text.split()) >= 120]
    planted: dict[int, int] = {}
    while len(planted) < count:
        source = rng.choice(long)
        tokens = texts[source].split(" ")
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(tokens))
            edit = rng.choice(("replace", "insert", "delete", "swap"))
            if edit == "replace":
                tokens[at] = f"edit{rng.randrange(10**6)}"
            elif edit == "insert":
                tokens.insert(at, f"added{rng.randrange(10**6)}")
            elif edit == "delete" and len(tokens) > 1:
                del tokens[at]
            elif at + 1 < len(tokens):
                tokens[at], tokens[at + 1] = tokens[at + 1], tokens[at]
        copy = " ".join(tokens)
        if jaccard(copy, texts[source]) >= threshold:
            planted[len(texts)] = source
            texts.append(copy)
    return planted


def datasketch_duplicates(texts: Sequence[str], threshold: float, num_perm: int) -> list[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    shingle_sets = []
    for text in texts:
        tokens = words(text)
        shingles = [" ".join(tokens[i : i + NGRAM]).encode() for i in range(max(len(tokens) - NGRAM + 1, 1))]
        shingle_sets.append(shingles if tokens else [])
    hashes = MinHash.bulk(shingle_sets, num_perm=num_perm, seed=42)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    found = []
    for index, (minhash, shingles) in enumerate(zip(hashes, shingle_sets, strict=True)):
        if not shingles:
            continue
        candidates = lsh.query(minhash)
        if candidates:
            found.append((index, min(candidates)))
        else:
            lsh.insert(index, minhash)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = one_core_parser(__doc__.splitlines()[0])
    parser.add_argument("--planted", type=int, default=500)
    args = parser.parse_args(argv)
    pin_one_core()

    texts = load(args.data)
    threshold = NearDedupConfig().threshold
    planted = plant(texts, args.planted, threshold)
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6

    cases: list[tuple[str, Callable[[], list[tuple[int, int]]]]] = []
    for backend in ("rensa", "numpy"):
        config = NearDedupConfig(backend=backend)
        bands, rows = band_shape(config)
        cases.append((
            f"llmft `{backend}` (LSH {bands}x{rows})",
            lambda config=config: [(d.index, d.of) for d in near_duplicates(texts, config)],
        ))  # fmt: skip
    try:
        import datasketch

        cases.append((
            f"datasketch {datasketch.__version__} (MinHash.bulk + MinHashLSH)",
            lambda: datasketch_duplicates(texts, threshold, NearDedupConfig().num_perm),
        ))  # fmt: skip
    except ImportError:
        pass

    rows_out = []
    for name, work in cases:
        seconds, found = best_time(work, args.repeat)
        hits = sum(planted.get(index) == of for index, of in found)
        others = [(index, of) for index, of in found if index not in planted]
        genuine = sum(jaccard(texts[index], texts[of]) >= threshold for index, of in others)
        rows_out.append((name, seconds, megabytes / seconds, hits / len(planted), genuine, len(others) - genuine))

    print(f"Machine: {machine()}")
    print(f"{len(texts)} texts ({len(planted)} planted near-duplicates), {megabytes:.2f} MB; threshold {threshold}\n")
    header = ("backend", "seconds", "MB/s", "recall (planted)", "other removals, J>=thr", "false removals")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|---|---:|---:|---:|---:|---:|")
        for name, seconds, speed, recall, genuine, false in rows_out:
            print(f"| {name} | {seconds:.3f} | {speed:.1f} | {recall:.3f} | {genuine} | {false} |")
    else:
        for name, seconds, speed, recall, genuine, false in rows_out:
            print(f"{name:<52} {seconds:7.3f} s {speed:6.1f} MB/s  recall {recall:.3f}  other {genuine}  false {false}")


if __name__ == "__main__":
    main()
