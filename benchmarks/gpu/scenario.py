"""One scenario of the GPU check, in a process of its own (kernel set-up and allocator state differ per process, so
each scenario starts clean). Writes one JSON file; `check.py` runs these and judges the targets.

    python benchmarks/gpu/scenario.py sft llmft-lora --shape llama-3.2-1b --out R.json
    python benchmarks/gpu/scenario.py grpo gen-static --shape llama-3.2-1b --out R.json
    python benchmarks/gpu/scenario.py correctness --shape llama-3.2-1b --out R.json
    python benchmarks/gpu/scenario.py estimate --out R.json
    python benchmarks/gpu/scenario.py models --shape llama-3.2-1b llama-3.2-3b

The SFT scenarios train on real Alpaca rows (the bundle's 2000-row sample, Mistral-v0.3 tokenizer) with about 32k
real tokens per optimizer step: 64 examples a micro-batch, 6 micro-batches a step, for every runner alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODELS = Path(os.environ.get("LLMFT_GPU_MODELS", Path(tempfile.gettempdir()) / "llmft-gpu-models"))
MICRO_BATCH, ACCUMULATION = 64, 6  # x 86 tokens per Alpaca example on average: ~33k real tokens a step

# name -> bench_train.Scenario fields. Plain runners pad; ours run their defaults (padding-free rows).
SFT: dict[str, dict[str, Any]] = {
    "hf-peft-padded": {"runner": "hf", "precision": "bf16"},
    "trl-sft": {"runner": "trl"},
    "llmft-lora": {},
    "llmft-lora-liger": {"liger": True, "needs": ("liger_kernel",)},
    "llmft-lora-gc": {"gradient_checkpointing": True},
    "hf-full-padded": {"runner": "hf", "adapter": "full", "precision": "bf16"},
    "llmft-full": {"adapter": "full"},
    "llmft-full-liger": {"adapter": "full", "liger": True, "needs": ("liger_kernel",)},
    "llmft-full-gc": {"adapter": "full", "gradient_checkpointing": True},
}


def suite(shape: str, device: str, samples: int = 2000) -> Any:
    import bench_train

    scenarios = [bench_train.Scenario(name, **{"needs": (), **spec}) for name, spec in SFT.items()]
    groups = [("sft", "hf-peft-padded", list(SFT))]
    built = bench_train.Suite(shape, "alpaca", MICRO_BATCH, 2048, samples, scenarios, groups, device=device)
    built.accumulation = ACCUMULATION
    return built


def model_path(shape: str, device: str) -> Path:
    import bench_train
    import torch

    cuda = device.startswith("cuda")
    return bench_train.model_dir(
        shape, bench_train.load_tokenizer(), torch.bfloat16 if cuda else torch.float32, MODELS, device=device
    )


def run_sft(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import bench_train
    import torch

    cuda = args.device.startswith("cuda")
    bench_train.STEPS[0] = args.steps
    bench_train.PLUMBING[0] = not cuda
    built = suite(args.shape, args.device, args.samples)
    if not cuda:  # plumbing on CPU: small steps, the same code
        built.batch, built.accumulation, built.max_length = 4, 1, 256
    scenario = next(s for s in built.scenarios if s.name == name)
    reason = bench_train.missing(scenario, args.device)
    if reason:
        return {"skipped": reason}
    tokenizer = bench_train.load_tokenizer()
    path = model_path(args.shape, args.device)
    from matmul_peak import matmul_peak

    peaks = {} if cuda else matmul_peak(args.device, (256,), repeat=1)
    ctx = {"warmup": args.warmup, "pad": tokenizer.pad_token_id, "model": path, "peaks": peaks}
    measured = bench_train.Measured()
    bench_train.measure(scenario, built, ctx, measured)
    result = bench_train.result_of(scenario, built, "sft", "hf-peft-padded", measured, ctx)
    out = dataclasses.asdict(result)
    out["examples_per_step"] = built.batch * built.accumulation
    if cuda:
        out["memory"]["cuda_peak"] = torch.cuda.max_memory_allocated()
    out["fast_path"] = fast_path_lines()
    return out


def run_grpo(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import bench_grpo
    import torch

    cuda = args.device.startswith("cuda")
    grpo = argparse.Namespace(
        device=args.device,
        shape=args.shape,
        batch=8,
        accumulation=2,
        generations=4,
        completion=64 if cuda else 8,
        warmup=args.warmup,
        steps=args.steps,
    )
    tokenizer = bench_grpo.load_tokenizer()
    path = model_path(args.shape, args.device)
    result = bench_grpo.run(name, grpo, path, tokenizer.pad_token_id)
    out = dataclasses.asdict(result)
    if cuda:
        out.setdefault("memory", {})["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def run_correctness(args: argparse.Namespace) -> dict[str, Any]:
    """Packed == unpacked loss on the training path's attention (bf16), and no example sees another."""
    import copy

    import bench_train
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from llm_finetuning.config.schema import Config, DataConfig
    from llm_finetuning.data.pipeline import prepare_data
    from llm_finetuning.models import fast_path, row_attention, varlen_kernel

    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer = bench_train.load_tokenizer()
    path = model_path(args.shape, args.device)
    rows_config = DataConfig(train=bench_train.source(suite(args.shape, args.device, 64)), max_length=2048)
    data = prepare_data(rows_config, tokenizer, False, 0)
    rows = [{"input_ids": data.train[i]["input_ids"], "labels": data.train[i]["labels"]} for i in range(16)]
    padded_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(args.device)
    packed_model = copy.deepcopy(padded_model)
    config = Config.model_validate({"data": {"train": {"path": "x.jsonl", "format": "alpaca"}}})
    plan = fast_path.for_config(config, hidden_size=2048)
    isolated = row_attention.prepare_rows(packed_model, plan)
    calls = [0]
    load = varlen_kernel.load_kernel

    def counting() -> Any:
        kernel = load()

        def call(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            return kernel(*a, **k)

        call.__signature__ = __import__("inspect").signature(kernel)  # the adapter reads the kernel's arguments
        return call

    varlen_kernel.load_kernel = counting
    pad = tokenizer.pad_token_id
    padded = {k: v.to(args.device) for k, v in DataCollatorForLanguageModeling(pad, padding_free=False)(rows).items()}
    packed = {
        k: v.to(args.device) if hasattr(v, "to") else v
        for k, v in DataCollatorForLanguageModeling(pad, padding_free=True)(rows).items()
    }
    with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
        loss_padded = padded_model(**padded).loss.float()
        calls[0] = 0
        out = packed_model(**packed)
        per_forward = calls[0]
        loss_packed = out.loss.float()
        together = out.logits[0].float()
        start = sum(len(r["input_ids"]) for r in rows[:3])
        alone_ids = torch.tensor([rows[3]["input_ids"]], device=args.device)
        alone = packed_model(input_ids=alone_ids).logits[0].float()
        piece = together[start : start + alone.shape[0]]
    relative = abs(loss_packed - loss_padded).item() / abs(loss_padded).item()
    leak = ((piece - alone).abs().max() / alone.abs().max().clamp(min=1.0)).item()
    return {
        "attention": plan.attention.value,
        "isolated": isolated,
        "packed_loss": loss_packed.item(),
        "padded_loss": loss_padded.item(),
        "packed_loss_relative_difference": relative,
        "cross_example_difference": leak,
        "kernel_calls_per_forward": per_forward if plan.attention.value == fast_path.TORCH_VARLEN else None,
        "layers": packed_model.config.num_hidden_layers,
        "examples": len(rows),
        "fast_path": fast_path_lines(),
    }


def run_estimate(args: argparse.Namespace) -> dict[str, Any]:
    """validate_estimate's 1B LoRA cases (with and without checkpointing), each in a process of its own."""
    import subprocess

    script = HERE.parent / "validate_estimate.py"
    done = subprocess.run(
        [sys.executable, str(script), "--device", args.device.split(":")[0], "--only", "1B", "--adapter", "lora",
         "--json"],
        capture_output=True, text=True, check=False, timeout=args.timeout,
    )  # fmt: skip
    if done.returncode:
        return {"skipped": f"validate_estimate failed: {done.stderr[-600:]}"}
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return {"cases": rows, "estimate_errors": [(r["predicted"] - r["measured"]) / r["measured"] for r in rows]}


def fast_path_lines() -> dict[str, str]:
    from llm_finetuning.models import fast_path

    config_class = __import__("llm_finetuning.config.schema", fromlist=["Config"]).Config
    defaults = config_class.model_validate({"data": {"train": {"path": "x.jsonl", "format": "alpaca"}}})
    return dict(fast_path.plan(defaults, fast_path.capabilities()).lines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("sft", "grpo", "correctness", "estimate", "models"))
    parser.add_argument("name", nargs="?", default="")
    parser.add_argument("--shape", nargs="+", default=["llama-3.2-1b"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    shapes, args.shape = args.shape, args.shape[0]
    if args.kind == "models":
        for shape in shapes:
            print(model_path(shape, args.device))
        return
    try:
        runner = {"sft": run_sft, "grpo": run_grpo}.get(args.kind)
        result = (
            runner(args.name, args)
            if runner
            else {"correctness": run_correctness, "estimate": run_estimate}[args.kind](args)
        )
    except Exception as exc:  # the check records the failure and goes on with the next scenario
        result = {"skipped": f"failed: {type(exc).__name__}: {str(exc)[:300]}", "traceback": traceback.format_exc()}
    result.update(kind=args.kind, name=args.name, shape=args.shape, device=args.device)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text[-2000:])


if __name__ == "__main__":
    main()
