"""The same mergekit configs merged by mergekit 0.1.5 and by `llmft merge-models`: how far apart the results are.

    .venv/bin/python benchmarks/compare_mergekit.py [--dtype float32|bfloat16] [--cases linear ties ...]

Builds the tiny Llama family of tests/merge_fixtures.py (a random base and three models made from it, saved in
`--dtype`), runs
every config of its CASES through mergekit's Python API (as `mergekit-yaml --random-seed 7`) and through
llmft (`seed: 7`), and prints one markdown row per config: tensors, largest absolute difference, elements
differing by more than 1e-5. Needs mergekit (`pip install --no-deps mergekit==0.1.5 immutables==0.21`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from tests.merge_fixtures import CASES, compare, family, run_llmft, run_mergekit, write_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the models have no tokenizer; both tools say so for every merge
    print(f"dtype: {args.dtype}\n")
    exact = args.dtype == "float32"
    extra = "" if exact else " max error vs float64, llmft &#124; mergekit |"
    print(f"| config | tensors | max abs difference | elements differing (> 1e-5) |{extra}")
    print("|---|---:|---:|---:|" + ("" if exact else "---:|"))
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        models = family(root)
        if not exact:  # stored in that type, as checkpoints on the Hub are
            for directory in models.values():
                weights = directory / "model.safetensors"
                save_file({k: v.to(getattr(torch, args.dtype)) for k, v in load_file(weights).items()}, str(weights))
        for name in args.cases:
            config = write_case(name, models, root)
            config.write_text(config.read_text().replace("dtype: float32", f"dtype: {args.dtype}"))
            ours, theirs = run_llmft(config, root / f"llmft-{name}"), run_mergekit(config, root / f"mk-{name}")
            result = compare(ours, theirs)
            share = result["differing"] / result["elements"]
            differing = f"{result['differing']:,} of {result['elements']:,}" + (f" ({share:.1%})" if share else "")
            row = f"| {name} | {result['tensors']} | {result['max_abs']:.1e} | {differing} |"
            if not exact:
                # The same inputs merged in float64: how far each tool's rounding takes it from there.
                config.write_text(config.read_text().replace(f"dtype: {args.dtype}", "dtype: float64"))
                reference = run_llmft(config, root / f"float64-{name}")
                errors = [compare(out, reference, cast=True)["max_abs"] for out in (ours, theirs)]
                row += f" {errors[0]:.1e} &#124; {errors[1]:.1e} |"
            print(row)


if __name__ == "__main__":
    main()
