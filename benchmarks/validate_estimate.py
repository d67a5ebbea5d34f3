"""Compare `llmft estimate`'s peak memory with the peak measured over real training steps.

    .venv/bin/python benchmarks/validate_estimate.py                 # CPU: tiny and ~100M Llama shapes
    .venv/bin/python benchmarks/validate_estimate.py --device cuda   # GPU: Llama-3.2-1B and 3B shapes
    add --markdown to print the table for docs/estimate.md, --output FILE to write it (benchmarks/results/)

Each case runs in a fresh process: a random-weight Llama of the given shape trains through the pieces the
toolkit's SFT path uses with its defaults, for two optimizer steps (so the optimizer states exist when the second
step peaks): the adapter from `apply_adapter` (LoRA r 16, dropout 0, all-linear, or full weights), TRL's fused LM
head as SFTTrainer installs it, replaced by the toolkit's plain head where TRL has no Triton kernel (CPU), the
batch padding-free (the examples end to end in one row, positions restarting, labels -100 at each example's first
position as TRL's collator sets them) with the fast path's attention for such rows (per-example sdpa on CPU, torch's
varlen flash kernel on CUDA), the autocast `training.mixed_precision: auto` resolves to on this machine (bf16 on
CUDA; on a CPU bf16 where it has native bf16 and the model is at least 128 wide), transformers' gradient
checkpointing without reentrancy, fused AdamW, gradient clipping and `zero_grad(set_to_none=True)`. Batch 4
examples x 512 tokens on CPU (float32 weights), 4 x 1024 on CUDA (bfloat16 weights). The estimate gets the same
config (`method: sft`, defaults otherwise).

Measurement. On CUDA: `torch.cuda.max_memory_allocated()` (what the estimate's `peak_allocated` predicts).
On CPU there is no allocator counter, so the peak resident set size is used: after imports and a warm-up step
of a throw-away model (which loads the kernels and thread pools), the kernel's peak-RSS mark is reset
(`/proc/self/clear_refs`), the model is built and trained, and the new peak (`VmHWM`) minus the RSS at the
reset is the measurement. glibc is told to serve every allocation above 64 KiB with its own mapping
(`MALLOC_MMAP_THRESHOLD_`), so freed tensors leave the resident set at once instead of staying in the heap.
Torch runs one thread per case (`VALIDATE_THREADS` to change it): the machine may be shared.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
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


def _fast_path(shape: str):  # type: ignore[no-untyped-def]
    """The fast path of SFT with its defaults on this machine for the shape, as training decides it."""
    from llm_finetuning.config.schema import Config, TinyModelConfig
    from llm_finetuning.models import fast_path

    hidden = TinyModelConfig().hidden_size if SHAPES[shape] is None else SHAPES[shape]["hidden_size"]
    config = Config.model_validate({"data": {"train": {"path": "unused.jsonl", "format": "alpaca"}}})
    return fast_path.plan(config, fast_path.capabilities(), hidden)


def worker(case: dict) -> dict:
    import types

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from llm_finetuning.config.adapters import FullAdapter, LoraAdapter
    from llm_finetuning.models.adapters import apply_adapter
    from llm_finetuning.models.lm_head import use_plain_lm_head
    from llm_finetuning.models.row_attention import use_row_attention

    device, shape, checkpointing = case["device"], case["shape"], case["checkpointing"]
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    path = _fast_path(shape)
    mixed = path.precision.value
    torch.manual_seed(0)

    def train(model, steps: int, batch: int, length: int) -> None:  # type: ignore[no-untyped-def]
        add_fused_lm_head(model)  # as SFTTrainer does
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        adapter = FullAdapter() if case["adapter"] == "full" else LoraAdapter()
        model = apply_adapter(model, adapter, gradient_checkpointing=checkpointing)
        if not use_row_attention(model, path.attention.value):
            raise RuntimeError(f"{path.attention.value} was refused; the SFT default would pad instead")
        if path.lm_head.value == "plain":  # where TRL has no Triton kernel
            use_plain_lm_head(types.SimpleNamespace(model=model))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
        vocab = model.get_input_embeddings().weight.shape[0]
        positions = torch.arange(length, device=device).repeat(batch).unsqueeze(0)
        for _ in range(steps):
            ids = torch.randint(0, vocab, (1, batch * length), device=device)
            labels = ids.clone()
            labels[positions == 0] = -100  # TRL's padding-free collator: no label at an example's first token
            with torch.autocast(device, dtype=torch.bfloat16, enabled=mixed == "bf16"):
                loss = model(input_ids=ids, position_ids=positions, labels=labels, fused_lm_head=True).loss
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
        torch.set_num_threads(int(os.environ.get("VALIDATE_THREADS", "1")))
        train(_build("tiny", device, dtype), 1, 2, 256)  # warm-up (the case's autocast): kernels, thread pools
        import gc

        gc.collect()
        base = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    train(_build(shape, device, dtype), STEPS, BATCH, LENGTH[device])
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM") * 1024 - base
    return {"measured": peak, "autocast": mixed}


# ------------------------------------------------------------------------------------------ the parent
def predicted(shape: str, adapter: str, checkpointing: bool, device: str, workdir: Path) -> tuple[float, str]:
    """The estimate's peak for the same config (SFT defaults), and the autocast it assumed."""
    from llm_finetuning.config.schema import Config
    from llm_finetuning.estimate import estimate

    model: dict = {"name": "tiny"}
    if SHAPES[shape] is not None:
        directory = workdir / shape
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"model_type": "llama", **SHAPES[shape]}))
        model = {"name": str(directory)}
    config = Config.model_validate(
        {
            "model": model,
            "adapter": adapter,
            "data": {
                "train": {"path": str(workdir / "unused.jsonl"), "format": "alpaca"},
                "max_length": LENGTH[device],
            },
            "method": "sft",
            "training": {"per_device_batch_size": BATCH, "gradient_checkpointing": checkpointing},
        }
    )
    result = estimate(config, device=device, with_suggestions=False)
    return result.memory.peak_allocated, "bf16" if result.plan.autocast else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--only", help="run only the cases whose model name contains this")
    parser.add_argument("--adapter", choices=("full", "lora"), help="run only the cases of this adapter")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line at the end")
    parser.add_argument("--output", type=Path, help="also write the Markdown (machine line and table) to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import harness

    info = harness.machine()
    if args.device == "cpu":
        info["torch_threads"] = int(os.environ.get("VALIDATE_THREADS", "1"))  # the workers'
    cases = CPU_CASES if args.device == "cpu" else CUDA_CASES
    cases = [c for c in cases if (not args.only or args.only in c[0]) and (not args.adapter or args.adapter == c[1])]
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
            result = json.loads(done.stdout.strip().splitlines()[-1])
            measured, mixed = result["measured"], result["autocast"]
            guess, assumed = predicted(shape, adapter, checkpointing, args.device, Path(tmp))
            if assumed != mixed:
                sys.exit(f"case {case}: the estimate assumed autocast {assumed}, the run used {mixed}")
            rows.append((shape, adapter, checkpointing, mixed, guess, measured))
            error = 100 * (guess - measured) / measured
            print(
                f"{shape:>13} {adapter:>5} ckpt={checkpointing!s:<5} autocast={mixed:<4} predicted "
                f"{guess / MIB:9.1f} MiB  measured {measured / MIB:9.1f} MiB  error {error:+6.1f}%",
                flush=True,
            )
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    header = "| model | adapter | checkpointing | autocast | batch x length | predicted MiB | measured MiB | error |"
    lines = [harness.machine_line(info), "", header, "|---|---|---|---|---|---:|---:|---:|"]
    for shape, adapter, checkpointing, mixed, guess, measured in rows:
        error = 100 * (guess - measured) / measured
        lines.append(
            f"| {shape} | {adapter} | {'on' if checkpointing else 'off'} | {mixed} | {BATCH} x {LENGTH[args.device]} | "
            f"{guess / MIB:.1f} | {measured / MIB:.1f} | {error:+.1f}% |"
        )
    text = "\n".join(lines) + "\n"
    if args.markdown:
        print("\n" + text, end="")
    if args.json:
        keys = ("shape", "adapter", "checkpointing", "autocast", "predicted", "measured")
        print(json.dumps([dict(zip(keys, row, strict=True)) for row in rows]))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(f"validate_estimate: predicted vs measured peak memory ({args.device})\n\n{text}")


if __name__ == "__main__":
    main()
