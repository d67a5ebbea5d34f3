"""Peak memory of `llmft merge-models` as the models grow: the streamed merge vs holding the models in memory.

    .venv/bin/python benchmarks/bench_merge_memory.py [--layers 2 10 40] [--method ties]

Three random Llama models (width 512, MLP 1376, vocabulary 2048, `--layers` layers: about 12.6 MB of float32
weights per layer) are merged by `--method` (ties, density 0.4, by default) in a fresh process each, which
reports the growth of its resident memory from just before the merge to its peak (VmHWM, reset through
/proc/self/clear_refs, so imports do not count). The comparison loads the three models whole, as the merge
did before it streamed (safetensors `load_file`, then a linear merge in memory).
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
sys.path.insert(0, str(REPO))
SHAPE = {"hidden_size": 512, "intermediate_size": 1376, "vocab_size": 2048, "num_attention_heads": 8}

RUNNER = """
import json, sys, time
import torch
torch.set_num_threads(1)
from safetensors.torch import load_file
from llm_finetuning.export.merge_config import load_merge_config
from llm_finetuning.export.merge_models import merge_models

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

config_path, output, mode = sys.argv[1], sys.argv[2], sys.argv[3]
config = load_merge_config(config_path)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
baseline, started = status("VmRSS"), time.perf_counter()
if mode == "streamed":
    merge_models(config, output_dir=output)
else:
    paths = [p for p in [config.base_model, *(m.path for m in config.models)] if p]
    models = [load_file(f"{path}/model.safetensors") for path in paths]
    merged = {name: sum(m[name] for m in models) / len(models) for name in models[0]}
print("RESULT", json.dumps({"growth": status("VmHWM") - baseline, "seconds": time.perf_counter() - started}))
"""


def run(config: Path, output: Path, mode: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(config), str(output), mode],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout.split("RESULT ", 1)[1])


def main(argv: list[str] | None = None) -> None:
    from tests.merge_fixtures import save_random_llama

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--method", default="ties")
    args = parser.parse_args(argv)
    print(f"Machine: {platform.processor() or 'CPU'}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(
        "| layers | one model (MB) | three models (MB) | largest tensor (MB) | path | peak growth (MB) | seconds |\n"
        "|---:|---:|---:|---:|---|---:|---:|"
    )
    with tempfile.TemporaryDirectory() as temp:
        for layers in sorted(args.layers):
            root = Path(temp) / f"layers-{layers}"
            shape = {**SHAPE, "num_hidden_layers": layers}
            paths = [save_random_llama(root / name, seed, **shape) for seed, name in enumerate(["base", "a", "b"])]
            size = (paths[1] / "model.safetensors").stat().st_size / 1e6
            largest = max(SHAPE["vocab_size"] * 512, 512 * 1376) * 4 / 1e6
            options = {"density": 0.4} if args.method not in ("linear", "task_arithmetic", "model_stock") else {}
            config = root / "merge.yaml"
            base = {"base_model": str(paths[0])} if args.method != "linear" else {}
            models = [{"path": str(p)} for p in paths[1:]]
            config.write_text(json.dumps({"method": args.method, **base, "models": models, **options}))
            for mode in ("streamed", "in memory"):
                started = time.perf_counter()
                result = run(config, root / f"out-{mode.replace(' ', '-')}", mode)
                label = f"{args.method}, streamed" if mode == "streamed" else "load_file x 3, linear in memory"
                growth, seconds = result["growth"] / 1e6, result["seconds"]
                print(
                    f"| {layers} | {size:.0f} | {3 * size:.0f} | {largest:.1f} | {label} | {growth:.0f} "
                    f"| {seconds:.1f} (process {time.perf_counter() - started:.0f}) |"
                )


if __name__ == "__main__":
    main()
