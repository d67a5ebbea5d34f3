"""Compare `llmft estimate`'s peak memory with the peak measured over real training steps.

    .venv/bin/python benchmarks/validate_estimate.py                 # CPU: tiny and ~100M Llama shapes
    .venv/bin/python benchmarks/validate_estimate.py --device cuda   # GPU: Llama-3.2-1B and 3B shapes
    add --markdown to print the table for docs/estimate.md

Each case runs in a fresh process: a random-weight Llama of the given shape trains through the pieces the
toolkit's SFT/pretraining path uses (the adapter from `apply_adapter`, TRL's fused LM head as SFTTrainer
installs it, transformers' gradient checkpointing without reentrancy, torch AdamW, gradient clipping,
`zero_grad(set_to_none=True)`) for two optimizer steps, so the optimizer states exist when the second step peaks.
Batch 4 x 512 tokens on CPU (float32), 4 x 1024 on CUDA (bfloat16 weights, bf16 autocast).

Measurement. On CUDA: `torch.cuda.max_memory_allocated()` (what the estimate's `peak_allocated` predicts).
On CPU there is no allocator counter, so the peak resident set size is used: after imports and a warm-up step
of a throw-away model (which loads the kernels and thread pools), the kernel's peak-RSS mark is reset
(`/proc/self/clear_refs`), the model is built and trained, and the new peak (`VmHWM`) minus the RSS at the
reset is the measurement. glibc is told to serve every allocation above 64 KiB with its own mapping
(`MALLOC_MMAP_THRESHOLD_`), so freed tensors leave the resident set at once instead of staying in the heap.
Limits: RSS counts pages, not tensors (a tensor allocated but never written is not counted), and includes the
few MiB that the autograd engine, Python objects and library buffers take. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
SHAPES = {
    # The toolkit's `model.name: tiny` default: llama, hidden 64, 2 layers, 4 heads, the 260-token tokenizer.
    "tiny": None,
    "100M": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, vocab_size=32000, tie_word_embeddings=False),
    "Llama-3.2-1B": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, head_dim=64),
    "Llama-3.2-3B": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, head_dim=128),
}  # fmt: skip
CPU_CASES = [(s, a, c) for s in ("tiny", "100M") for a in ("full", "lora") for c in (False, True)]
CUDA_CASES = [(s, a, c) for s in ("Llama-3.2-1B", "Llama-3.2-3B") for a in ("full", "lora") for c in (False, True)]
BATCH = 4
LENGTH = {"cpu": 512, "cuda": 1024}
STEPS = 2


# ------------------------------------------------------------------------------------------ the worker
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _build(shape: str, device: str, dtype):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llm_finetuning.config.schema import TinyModelConfig
    from llm_finetuning.models import tiny

    if SHAPES[shape] is None:
        return tiny.build_model(TinyModelConfig(), tiny.build_tokenizer(), dtype).to(device)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def worker(case: dict) -> dict:
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from llm_finetuning.config.adapters import FullAdapter, LoraAdapter
    from llm_finetuning.models.adapters import apply_adapter

    device, shape, checkpointing = case["device"], case["shape"], case["checkpointing"]
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    length = LENGTH[device]
    torch.manual_seed(0)

    def train(model, steps: int, batch: int, length: int) -> None:  # type: ignore[no-untyped-def]
        add_fused_lm_head(model)  # as SFTTrainer does before wrapping with PEFT
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        adapter = FullAdapter() if case["adapter"] == "full" else LoraAdapter()
        model = apply_adapter(model, adapter, gradient_checkpointing=checkpointing)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        vocab = model.get_input_embeddings().weight.shape[0]
        for _ in range(steps):
            ids = torch.randint(0, vocab, (batch, length), device=device)
            mask = torch.ones_like(ids)
            labels = ids.clone()
            if cuda:  # one padded position, so the attention takes a mask as on real padded batches
                mask[0, -1], labels[0, -1] = 0, -100
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
                loss = model(
                    input_ids=ids, attention_mask=mask if cuda else None, labels=labels, fused_lm_head=True
                ).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        torch.set_num_threads(int(os.environ.get("VALIDATE_THREADS", "2")))
        train(_build("tiny", device, dtype), 1, 2, 64)  # warm-up: kernels, thread pools, allocator arenas
        import gc

        gc.collect()
        base = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    train(_build(shape, device, dtype), STEPS, BATCH, length)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM") * 1024 - base
    return {"measured": peak}


# ------------------------------------------------------------------------------------------ the parent
def predicted(shape: str, adapter: str, checkpointing: bool, device: str, workdir: Path) -> float:
    from llm_finetuning.config.schema import Config
    from llm_finetuning.estimate import estimate

    model: dict = {"name": "tiny"}
    if SHAPES[shape] is not None:
        directory = workdir / shape
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"model_type": "llama", **SHAPES[shape]}))
        model = {"name": str(directory)}
    cuda = device == "cuda"
    model["dtype"] = "bfloat16" if cuda else "float32"
    config = Config.model_validate(
        {
            "model": model,
            "adapter": adapter,
            "data": {"train": {"path": str(workdir / "unused.jsonl"), "format": "text"}, "max_length": LENGTH[device]},
            "method": "pretrain",
            "training": {
                "per_device_batch_size": BATCH,
                "gradient_checkpointing": checkpointing,
                "mixed_precision": "bf16" if cuda else "no",
            },
        }
    )
    return estimate(config, device=device, with_suggestions=False).memory.peak_allocated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--only", help="run only the cases whose model name contains this")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    cases = CPU_CASES if args.device == "cpu" else CUDA_CASES
    cases = [c for c in cases if not args.only or args.only in c[0]]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, adapter, checkpointing in cases:
            case = {"device": args.device, "shape": shape, "adapter": adapter, "checkpointing": checkpointing}
            done = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(case)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                sys.exit(f"case {case} failed:\n{done.stderr[-3000:]}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])["measured"]
            guess = predicted(shape, adapter, checkpointing, args.device, Path(tmp))
            rows.append((shape, adapter, checkpointing, guess, measured))
            error = 100 * (guess - measured) / measured
            print(
                f"{shape:>13} {adapter:>5} ckpt={checkpointing!s:<5} predicted {guess / MIB:9.1f} MiB  "
                f"measured {measured / MIB:9.1f} MiB  error {error:+6.1f}%",
                flush=True,
            )
    if args.markdown:
        length = LENGTH[args.device]
        print("\n| model | adapter | checkpointing | batch x length | predicted MiB | measured MiB | error |")
        print("|---|---|---|---|---:|---:|---:|")
        for shape, adapter, checkpointing, guess, measured in rows:
            error = 100 * (guess - measured) / measured
            print(
                f"| {shape} | {adapter} | {'on' if checkpointing else 'off'} | {BATCH} x {length} | "
                f"{guess / MIB:.1f} | {measured / MIB:.1f} | {error:+.1f}% |"
            )


if __name__ == "__main__":
    main()
