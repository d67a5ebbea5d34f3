"""Decoding through a LoRA adapter against decoding from merged weights (`method.generation_weights: merged`).

    .venv/bin/python benchmarks/bench_merged_generation.py                 # CPU: tiny and 100M Llama shapes
    python benchmarks/bench_merged_generation.py --device cuda --shape llama-3.2-1b

The same PEFT model (LoRA r16 on every linear layer, random non-zero adapter) generates the same greedy tokens for a
batch of prompts, once on the adapter path and once from merged weights. Reported: tokens per second (median of
`--repeat` calls after one warm-up), and the torch operators run per decoded token, counted by the profiler: on a
GPU each is at least one kernel launch, which is what bounds decoding a small batch there. The tokens are checked
to be identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_train import SHAPES  # noqa: E402

from llm_finetuning.models.merged_generation import sample_from_merged  # noqa: E402

VOCAB = 32768  # the Mistral-v0.3 tokenizer's, as bench_train's shapes use


def build(shape: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=spec["vocab"] or VOCAB, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=4096, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM(config).to(dtype)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, lora).eval()


def decode(model: torch.nn.Module, prompts: torch.Tensor, tokens: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=tokens, min_new_tokens=tokens,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip


def operators_per_token(model: torch.nn.Module, prompts: torch.Tensor, tokens: int) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode(model, prompts, tokens)
    top_level = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
    return len(top_level) / tokens


def measure(model: torch.nn.Module, prompts: torch.Tensor, tokens: int, repeat: int, device: str) -> dict:
    decode(model, prompts, tokens)  # warm-up
    seconds = []
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        out = decode(model, prompts, tokens)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - began)
    median = statistics.median(seconds)
    return {
        "tokens_per_s": prompts.shape[0] * tokens / median,
        "operators_per_token": operators_per_token(model, prompts, tokens),
        "out": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", nargs="*", default=["tiny", "100m"], choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if not cuda and args.threads:
        torch.set_num_threads(args.threads)
    print(harness.machine_line(harness.machine()))
    print("\n| shape | path | tokens/s | ratio | torch ops per decoded token |\n|---|---|---:|---:|---:|")
    for shape in args.shape:
        model = build(shape, args.device, torch.bfloat16 if cuda else torch.float32)
        prompts = torch.randint(1, VOCAB, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
        prompts = prompts.to(args.device)
        adapter = measure(model, prompts, args.tokens, args.repeat, args.device)
        sample_from_merged(model)
        merged = measure(model, prompts, args.tokens, args.repeat, args.device)
        same = torch.equal(adapter["out"], merged["out"])
        for name, result in (("adapter", adapter), ("merged", merged)):
            ratio = result["tokens_per_s"] / adapter["tokens_per_s"]
            print(
                f"| {shape} | {name} | {result['tokens_per_s']:,.0f} | {ratio:.2f} | "
                f"{result['operators_per_token']:.0f} |"
            )
        print(f"<!-- {shape}: identical tokens: {same} -->")
        del model


if __name__ == "__main__":
    main()
