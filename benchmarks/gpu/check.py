"""The GPU check: one command on a machine with one GPU and no package registry (../shared/GPU.md).

    python benchmarks/gpu/check.py                         # after `prepare.py` made .gpu/ where a registry was
    python benchmarks/gpu/check.py --plumbing --no-install # on a CPU: every step on a tiny shape, no figures

It installs the bundle's wheels into a folder of their own (`pip install --no-index --no-deps --target`, never a
torch), prints what the machine has, draws random Llama-3.2-1B and 3B weights on the GPU, then runs every scenario
in a process of its own (no order effects; warm-up steps excluded, median of the measured ones), most important
first, within a time budget: the packed-row correctness check, SFT at 1B (llmft defaults, plain HF+PEFT padded,
TRL SFTTrainer defaults, full fine-tuning), SFT at 3B, Liger and gradient checkpointing at 1B, GRPO generation, the
1B memory estimate against the measured peak. After every scenario it rewrites `results.json` and `results.md`, so
a run cut short still leaves its figures. It exits 1 when a target is missed or not measured, naming each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import targets  # noqa: E402

SHAPES = {"1b": "llama-3.2-1b", "3b": "llama-3.2-3b"}
# (key, kind, name, shape): run in this order while the budget lasts.
PLAN: list[tuple[str, str, str, str]] = [
    ("correctness@1b", "correctness", "", "1b"),
    ("llmft-lora@1b", "sft", "llmft-lora", "1b"),
    ("hf-peft-padded@1b", "sft", "hf-peft-padded", "1b"),
    ("trl-sft@1b", "sft", "trl-sft", "1b"),
    ("llmft-full@1b", "sft", "llmft-full", "1b"),
    ("hf-full-padded@1b", "sft", "hf-full-padded", "1b"),
    ("llmft-lora@3b", "sft", "llmft-lora", "3b"),
    ("llmft-full@3b", "sft", "llmft-full", "3b"),
    ("llmft-lora-liger@1b", "sft", "llmft-lora-liger", "1b"),
    ("llmft-lora-gc@1b", "sft", "llmft-lora-gc", "1b"),
    ("llmft-full-liger@1b", "sft", "llmft-full-liger", "1b"),
    ("llmft-full-gc@1b", "sft", "llmft-full-gc", "1b"),
    ("grpo-gen-batched@1b", "grpo", "gen-batched", "1b"),
    ("grpo-gen-static@1b", "grpo", "gen-static", "1b"),
    ("grpo-gen-static-merged@1b", "grpo", "gen-static-merged", "1b"),
    ("estimate@1b", "estimate", "", "1b"),
]
H200_BF16_PEAK = 989e12


def install(bundle: Path, site: Path) -> list[str]:
    """Install the core wheels, and the others only where the image lacks their module; never resolve."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    missing_names = {name.lower().replace("-", "_") for name, module in manifest["if_missing"].items()
                     if importlib.util.find_spec(module) is None}  # fmt: skip
    core = {name.lower().replace("-", "_") for name in manifest["core"]}
    chosen = []
    for wheel in sorted((bundle / "wheels").glob("*.whl")):
        distribution = wheel.name.split("-")[0].lower()
        if distribution in core or distribution in missing_names:
            chosen.append(str(wheel))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site)]
    subprocess.run([*command, *chosen], check=True)
    return [Path(w).name for w in chosen]


def environment(bundle: Path, site: Path | None, plumbing: bool) -> dict[str, str]:
    paths = [str(site)] if site else []
    paths += [str(REPO / "src"), str(REPO / "benchmarks")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not plumbing:
        env["LLMFT_SHARED_DATA"] = str(bundle / "data")
    return env


PROBE = """
import json, torch, transformers, trl, peft, datasets, accelerate
from llm_finetuning.models import fast_path
caps = fast_path.detect()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
    "trl": trl.__version__, "peft": peft.__version__, "datasets": datasets.__version__,
    "accelerate": accelerate.__version__, "capabilities": caps.describe(), "torch_varlen": caps.torch_varlen,
    "triton": caps.triton, "liger": caps.liger, "flash_attn": caps.flash_attn}))
"""


def run(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """(exit code, stdout, the end of stderr) of a child process; 124 when it ran past `timeout`."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr or b""
        return 124, "", (tail.decode(errors="replace") if isinstance(tail, bytes) else str(tail))[-1500:]
    return done.returncode, done.stdout, done.stderr[-3000:]


def row(key: str, result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return f"| {key} | skipped: {str(result['skipped'])[:160]} | | | | | |"
    figures = result.get("figures", {})
    if "tokens_per_s" not in figures:
        return f"| {key} | see results.json | | | | | |"
    peak = (result.get("memory") or {}).get("cuda_peak")
    split = figures.get("split_s") or {}
    cells = [
        key,
        f"{figures['tokens_per_s']:,.0f}",
        f"{figures.get('tokens_per_step', 0):,.0f}",
        f"{figures['median_step_s']:.2f}",
        f"{100 * figures['mfu']:.1f}%" if "mfu" in figures else "-",
        f"{peak / 2**30:.1f} GiB" if peak else "-",
        f"generation {split['generation']:.2f} s" if split else "",
    ]
    return "| " + " | ".join(cells) + " |"


def write(out: Path, header: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[targets.Target]:
    extras: dict[str, Any] = {}
    extras.update({k: v for k, v in results.get("correctness@1b", {}).items() if not isinstance(v, dict)})
    extras.update({k: v for k, v in results.get("estimate@1b", {}).items() if k == "estimate_errors"})
    judged = targets.evaluate(results, extras)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**header, "results": results, "targets": [vars(t) | {"status": t.status} for t in judged]}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    lines = [
        f"GPU check: {header.get('machine', '')}",
        "",
        f"versions: {header.get('versions', {})}",
        "",
        "| scenario | tokens/s (real) | tokens/step | step s | MFU | GPU peak | |",
        "|---|---:|---:|---:|---:|---:|---|",
        *[row(key, result) for key, result in results.items() if key not in ("correctness@1b", "estimate@1b")],
        "",
        "Targets:",
        "",
        targets.markdown(judged),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / ".gpu")
    parser.add_argument("--site", type=Path, default=Path("/tmp/llmft-gpu-site"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu-check")
    parser.add_argument("--budget", type=float, default=450, help="seconds for all scenarios (the check: < 8 min)")
    parser.add_argument("--scenario-timeout", type=float, default=150)
    parser.add_argument("--only", nargs="*", default=None, help="scenario keys to run (default: all)")
    parser.add_argument("--no-install", action="store_true", help="use the packages already importable")
    parser.add_argument("--plumbing", action="store_true", help="CPU, tiny shape: check the machinery, no figures")
    args = parser.parse_args()
    started = time.monotonic()
    site = None
    header: dict[str, Any] = {"machine": f"{platform.node()} {platform.platform()} python {platform.python_version()}"}
    if not args.no_install:
        header["installed"] = install(args.bundle, args.site)
        site = args.site
    env = environment(args.bundle, site, args.plumbing)
    print(subprocess.run([sys.executable, "-m", "pip", "list"], capture_output=True, text=True).stdout[-4000:])
    code, text, errors = run([sys.executable, "-c", PROBE], env, 120)
    if code:
        header["probe_error"] = errors
        write(args.out, header, {})
        sys.exit(f"the stack does not import here:\n{errors}")
    header["versions"] = json.loads(text.strip().splitlines()[-1])
    print("versions:", header["versions"], flush=True)
    device = "cpu" if args.plumbing else "cuda"
    shapes = {"1b": "tiny", "3b": "tiny"} if args.plumbing else SHAPES
    scenario = [sys.executable, str(HERE / "scenario.py")]
    common = ["--device", device] + (["--steps", "2", "--warmup", "1", "--samples", "64"] if args.plumbing else [])
    code, _, errors = run([*scenario, "models", "--shape", *sorted(set(shapes.values())), "--device", device], env, 180)
    if code:
        sys.exit(f"could not draw the models:\n{errors}")
    results: dict[str, dict[str, Any]] = {}
    for key, kind, name, shape in PLAN:
        if args.only and key not in args.only:
            continue
        left = args.budget - (time.monotonic() - started)
        if left < 20:
            results[key] = {"skipped": "not run: the time budget was spent"}
            continue
        out = args.out / "scenarios" / f"{key}.json"
        out.unlink(missing_ok=True)
        command = [*scenario, kind, *([name] if name else []), "--shape", shapes[shape], "--out", str(out), *common]
        began = time.monotonic()
        code, _, errors = run(command, env, min(args.scenario_timeout, left))
        result = json.loads(out.read_text()) if out.is_file() else {"skipped": f"exit {code}: {errors[-400:]}"}
        result["wall_s"] = round(time.monotonic() - began, 1)
        results[key] = result
        print(f"{key:<24} {result['wall_s']:>6.1f} s  {result.get('skipped') or 'done'}", flush=True)
        write(args.out, header, results)
    judged = write(args.out, header, results)
    print((args.out / "results.md").read_text())
    failed = [t for t in judged if t.met is not True]
    if failed and not args.plumbing:
        sys.exit("targets not met: " + "; ".join(f"{t.name} ({t.status}: {t.value}, goal {t.goal})" for t in failed))


if __name__ == "__main__":
    main()
