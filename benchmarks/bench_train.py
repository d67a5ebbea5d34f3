"""Training throughput: our SFT path against plain TRL and plain transformers, and each fast setting against its off.

    .venv/bin/python benchmarks/bench_train.py --suite cpu-tiny      # list: --list
    .venv/bin/python benchmarks/bench_train.py --suite gpu-1b --device cuda

Every scenario trains a randomly-initialised Llama-shaped model on real text (Alpaca 2000-sample or GSM8K train from
../shared/data, Mistral-v0.3 tokenizer) for `--warmup` + `--steps` optimizer steps, and reports the median over the
measured steps (see `harness.py`): real tokens/s (padding not counted), the ratio to the group's baseline measured in
the same run, padding fraction, MFU against the measured matmul peak (CPU) or 989 TFLOP/s (H100/H200 bf16 dense),
and peak memory. Scenarios that need what is not there (CUDA, flash-attn, liger-kernel, unsloth) are listed as
skipped with the reason. Results go to `benchmarks/results/<suite>.json` and `.md`.

Runners:
- `llmft`: `llm_finetuning.train.train` on a config, exactly as `llmft train` runs it;
- `trl`: plain `trl.SFTTrainer` with `SFTConfig` defaults (and plain PEFT), prompt/completion records;
- `hf`: plain `transformers.Trainer` (defaults, plain PEFT), the same tokenized examples padded per batch;
- `unsloth`: Unsloth's own loader and LoRA with TRL's SFTTrainer, as Unsloth's examples do (the `llmft` runner with
  `model.backend: unsloth` is our path on Unsloth, beside it).

Unsloth patches transformers, TRL and PEFT when it is imported, and this script imports transformers first; with
`--unsloth-first` it imports Unsloth before anything else (the whole process is then patched: run the Unsloth scenarios
with `--only` in a process of their own).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
if "--unsloth-first" in sys.argv:  # before harness imports transformers (see the module docstring)
    import unsloth  # noqa: F401

import harness  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMFT_SHARED_DATA", REPO.parent / "shared" / "data"))
TOKENIZER = SHARED / "tokenizers" / "mistral-7b-v0.3"
H100_BF16_PEAK = 989e12  # dense bf16 tensor-core flops/s of an H100/H200 SXM

DATASETS: dict[str, dict[str, Any]] = {
    "alpaca": {"path": str(SHARED / "alpaca/alpaca_sample2000.alpaca_small.json"), "format": "alpaca"},
    "gsm8k": {
        "path": str(SHARED / "gsm8k/train.jsonl"),
        "format": "prompt_completion",
        "columns": {"prompt": "question", "completion": "answer"},
    },
}

# Llama shapes. `vocab` None: the tokenizer's (32768); the Llama-3.2 shapes keep their own 128256-token head.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 4, "intermediate": 704, "vocab": None},
    "100m": {"hidden": 768, "layers": 12, "heads": 12, "kv_heads": 12, "intermediate": 2048, "vocab": None},
    "llama-3.2-1b": {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "vocab": 128256},
    "llama-3.2-3b": {"hidden": 3072, "layers": 28, "heads": 24, "kv_heads": 8, "intermediate": 8192, "vocab": 128256},
}


@dataclass(frozen=True)
class Scenario:
    """One training configuration. `None` leaves a setting at the runner's own default."""

    name: str
    runner: str = "llmft"  # llmft | trl | hf | unsloth
    adapter: str = "lora"  # lora | full
    lora_dropout: float | None = None
    precision: str | None = None  # no | bf16 (None: the runner's default)
    packing: bool | None = None
    padding_free: bool | None = None
    optimizer: str | None = None
    gradient_checkpointing: bool | None = None
    attention: str | None = None  # None: ours `auto`, plain runners `sdpa`
    liger: bool = False
    trl_head: bool = False  # ours with TRL's fused LM head instead of the plain one (CPU)
    batch: int | None = None  # per-device batch (None: the suite's)
    accumulation: int | None = None  # micro-batches per optimizer step (None: the suite's)
    backend: str | None = None  # llmft runner: model.backend (None: transformers)
    needs: tuple[str, ...] = ()  # cuda, flash_attn, liger_kernel, unsloth


@dataclass
class Suite:
    shape: str
    dataset: str
    batch: int
    max_length: int
    samples: int
    scenarios: list[Scenario]
    groups: list[tuple[str, str, list[str]]]  # (group, baseline, scenario names)
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    accumulation: int = 1


PLAIN_LORA_DROPOUT = 0.05  # PEFT/TRL examples' usual LoRA dropout, what the plain baselines use


def cpu_suite(shape: str, dataset: str, batch: int, samples: int, full: bool = True) -> Suite:
    """Our defaults (`llmft-sft`) against the plain baselines, and each fast setting against its off switch.

    `llmft-sft` is every default of the toolkit (LoRA r16 without dropout, padding-free batches with per-example
    attention, bf16 autocast where the CPU is native bf16, fused AdamW); it appears in several groups, run once.
    """
    scenarios = [
        Scenario("hf-trainer-padded", runner="hf"),
        Scenario("hf-full-padded", runner="hf", adapter="full"),
        Scenario("trl-sft-defaults", runner="trl"),
        Scenario("llmft-sft"),
        Scenario("llmft-fp32", precision="no"),
        Scenario("llmft-padded", padding_free=False),
        Scenario("llmft-packed", packing=True),
        Scenario("llmft-packed-sdpa-mask", packing=True, attention="sdpa"),
        Scenario("llmft-full", adapter="full"),
        Scenario("llmft-full-adamw", adapter="full", optimizer="adamw_torch"),
        Scenario("llmft-lora-dropout", lora_dropout=PLAIN_LORA_DROPOUT),
        Scenario("llmft-trl-head", trl_head=True),
    ]
    groups = [
        ("paths", "hf-trainer-padded", ["hf-trainer-padded", "trl-sft-defaults", "llmft-sft"]),
        ("precision", "llmft-fp32", ["llmft-fp32", "llmft-sft"]),
        ("padding", "llmft-padded", ["llmft-padded", "llmft-sft", "llmft-packed", "llmft-packed-sdpa-mask"]),
        ("adapter", "llmft-full", ["llmft-full", "llmft-sft", "llmft-lora-dropout"]),
        ("plain-peft", "hf-full-padded", ["hf-full-padded", "hf-trainer-padded"]),
        ("optimizer", "llmft-full-adamw", ["llmft-full-adamw", "llmft-full"]),
        ("lm-head", "llmft-trl-head", ["llmft-trl-head", "llmft-sft"]),
    ]
    if not full:  # the wide model: the groups the targets need
        keep = {"paths", "precision", "padding", "adapter", "plain-peft", "lm-head"}
        groups = [(g, b, [n for n in names if n != "llmft-packed-sdpa-mask"]) for g, b, names in groups if g in keep]
    return Suite(shape, dataset, batch, 512, samples, scenarios, groups)


def gpu_suite(shape: str) -> Suite:
    """Llama-3.2 shapes on one GPU, bf16, sequence 2048: the plain HF + PEFT baseline against our kernels' choices."""
    need = ("cuda",)
    scenarios = [
        Scenario("hf-peft-sdpa-padded", runner="hf", precision="bf16", needs=need),
        Scenario("llmft-lora-sdpa-packed", packing=True, needs=need),
        Scenario("llmft-lora-fa2-packed", packing=True, attention="flash_attention_2", needs=(*need, "flash_attn")),
        Scenario("llmft-lora-liger-packed", packing=True, liger=True, needs=(*need, "liger_kernel")),
        Scenario("llmft-lora-gc-packed", packing=True, gradient_checkpointing=True, needs=need),
        Scenario("unsloth-lora-packed", runner="unsloth", packing=True, needs=(*need, "unsloth")),
        # Our path on Unsloth; checkpointing on, as in Unsloth's own run (TRL's and Unsloth's defaults).
        Scenario(
            "llmft-unsloth-gc-packed",
            packing=True,
            gradient_checkpointing=True,
            backend="unsloth",
            needs=(*need, "unsloth"),
        ),
        Scenario("hf-full-sdpa-padded", runner="hf", adapter="full", precision="bf16", needs=need),
        Scenario("llmft-full-sdpa-packed", adapter="full", packing=True, needs=need),
        Scenario(
            "llmft-full-liger-gc-packed",
            adapter="full",
            packing=True,
            liger=True,
            gradient_checkpointing=True,
            needs=(*need, "liger_kernel"),
        ),
    ]
    lora = [s.name for s in scenarios if s.adapter == "lora"]
    full = [s.name for s in scenarios if s.adapter == "full"]
    groups = [("lora", "hf-peft-sdpa-padded", lora), ("full", "hf-full-sdpa-padded", full)]
    # 16 padded examples a step; the packed runs fill about as many positions with rows of 2048 tokens.
    return Suite(shape, "alpaca", 16, 2048, 2000, scenarios, groups, device="cuda")


SUITES = {
    "cpu-tiny": lambda: cpu_suite("tiny", "alpaca", 8, 400),
    "cpu-tiny-gsm8k": lambda: cpu_suite("tiny", "gsm8k", 8, 400),
    "cpu-100m-gsm8k": lambda: cpu_suite("100m", "gsm8k", 4, 300, full=False),
    "cpu-100m": lambda: cpu_suite("100m", "alpaca", 8, 300, full=False),
    "gpu-1b": lambda: gpu_suite("llama-3.2-1b"),
    "gpu-3b": lambda: gpu_suite("llama-3.2-3b"),
}


# ------------------------------------------------------------------------------------------------ the model
def model_dir(shape: str, tokenizer: Any, dtype: torch.dtype, cache: Path, device: str = "cpu") -> Path:
    """Save a randomly-initialised model of `shape` once, so every runner loads the same weights from disk.

    `device` is where the random weights are drawn (a GPU draws a 3B model in seconds, a CPU in minutes)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    spec = SHAPES[shape]
    path = cache / f"{shape}-{str(dtype).split('.')[-1]}"
    if (path / "config.json").is_file():
        return path
    config = LlamaConfig(
        vocab_size=spec["vocab"] or len(tokenizer),
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=4096,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return path


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from llm_finetuning.models.loading import prepare_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    prepare_tokenizer(tokenizer, None)
    return tokenizer


def lora_config(dropout: float) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


def source(suite: Suite) -> dict[str, Any]:
    return {**DATASETS[suite.dataset], "max_samples": suite.samples}


def packed_batch(suite: Suite, tokenizer: Any, trials: int = 200) -> int:
    """Packed rows per step that fill about as many positions as a padded batch of `suite.batch` examples does.

    Packing is then compared at the same compute per step: the padded batch spends part of it on padding, the packed
    one fills it with more examples.
    """
    import random

    from llm_finetuning.config.schema import DataConfig
    from llm_finetuning.data.pipeline import prepare_data

    data = prepare_data(DataConfig(train=source(suite), max_length=suite.max_length), tokenizer, False, 0)
    lengths = [len(ids) for ids in data.train["input_ids"]]
    rng = random.Random(0)
    slots = sum(suite.batch * max(rng.sample(lengths, suite.batch)) for _ in range(trials)) / trials
    return max(1, round(slots / suite.max_length))


def batch_of(scenario: Scenario, suite: Suite) -> int:
    if scenario.batch:
        return scenario.batch
    return PACKED_BATCH[0] if scenario.packing else suite.batch


def accumulation_of(scenario: Scenario, suite: Suite) -> int:
    return scenario.accumulation or suite.accumulation


def missing(scenario: Scenario, device: str) -> str | None:
    """Why the scenario cannot run here, or None."""
    from llm_finetuning.env import is_installed

    for need in scenario.needs:
        if need == "cuda" and not device.startswith("cuda") and not PLUMBING[0]:
            return "needs a CUDA GPU (--device cuda)"
        if need != "cuda" and not is_installed(need):
            return f"needs `{need.replace('_', '-')}` installed"
    return None


# -------------------------------------------------------------------------------------------------- runners
def run_llmft(scenario: Scenario, suite: Suite, model_path: Path, work: Path, meter: harness.StepMeter) -> None:
    from llm_finetuning.config.schema import Config
    from llm_finetuning.train import train

    adapter: dict[str, Any] = {"method": "full"}
    if scenario.adapter == "lora":
        adapter = {"method": "lora", "r": 16, "alpha": 32}
        if scenario.lora_dropout is not None:
            adapter["dropout"] = scenario.lora_dropout
    training: dict[str, Any] = {
        "max_steps": meter.warmup + STEPS[0],
        "per_device_batch_size": batch_of(scenario, suite),
        "gradient_accumulation_steps": accumulation_of(scenario, suite),
        "learning_rate": 1e-4,
        "logging_steps": 10**6,
        "save_steps": 10**6,  # no checkpoint inside the measured window
        "seed": 0,
    }
    for key, value in (
        ("mixed_precision", scenario.precision),
        ("optimizer", scenario.optimizer),
        ("gradient_checkpointing", scenario.gradient_checkpointing),
    ):
        if value is not None:
            training[key] = value
    if scenario.liger:
        training["liger_kernel"] = True
    data: dict[str, Any] = {"train": source(suite), "max_length": suite.max_length}
    if scenario.packing is not None:
        data["packing"] = scenario.packing
    if scenario.padding_free is not None:
        data["padding_free"] = scenario.padding_free
    config = Config.model_validate(
        {
            "model": {
                "name": str(model_path),
                "tokenizer": str(TOKENIZER),
                "attn_implementation": scenario.attention or "auto",
                "backend": scenario.backend or "transformers",
            },
            "adapter": adapter,
            "data": data,
            "training": training,
            "output_dir": str(work / "run"),
        }
    )
    from llm_finetuning.methods import sft

    plain_head = sft.use_plain_lm_head
    if scenario.trl_head:
        sft.use_plain_lm_head = lambda *a, **k: False
    try:
        train(config, overwrite=True, callbacks=[meter])
    finally:
        sft.use_plain_lm_head = plain_head


def _records(suite: Suite) -> list[dict[str, Any]]:
    """Prompt/completion conversations of the suite's rows, as TRL's SFTTrainer takes them."""
    from llm_finetuning.config.schema import DataSource
    from llm_finetuning.data.pipeline import SplitStats, load_records

    rows = load_records(DataSource(**source(suite)), "fail", SplitStats(), "messages")
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for _, r in rows]


def _plain_model(scenario: Scenario, model_path: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    attention = scenario.attention or "sdpa"
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attention)


def run_trl(scenario: Scenario, suite: Suite, model_path: Path, work: Path, meter: harness.StepMeter) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer()
    overrides: dict[str, Any] = {}
    if scenario.precision is not None:
        overrides["bf16"] = scenario.precision == "bf16"
    if scenario.packing:
        overrides["packing"] = True
    if not suite.device.startswith("cuda"):
        overrides["use_cpu"] = True  # TRL's default bf16 refuses to start on CPU otherwise
    args = SFTConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=batch_of(scenario, suite),
        gradient_accumulation_steps=accumulation_of(scenario, suite),
        max_steps=meter.warmup + STEPS[0],
        max_length=suite.max_length,
        learning_rate=1e-4,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        seed=0,
        **overrides,
    )
    dtype = torch.bfloat16 if suite.device.startswith("cuda") else torch.float32
    trainer = SFTTrainer(
        model=_plain_model(scenario, model_path, dtype),
        args=args,
        train_dataset=Dataset.from_list(_records(suite)),
        processing_class=tokenizer,
        peft_config=lora_config(PLAIN_LORA_DROPOUT) if scenario.adapter == "lora" else None,
        callbacks=[meter],
    )
    trainer.train()


def run_hf(scenario: Scenario, suite: Suite, model_path: Path, work: Path, meter: harness.StepMeter) -> None:
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from llm_finetuning.config.schema import DataConfig
    from llm_finetuning.data.pipeline import prepare_data

    tokenizer = load_tokenizer()
    data = prepare_data(DataConfig(train=source(suite), max_length=suite.max_length), tokenizer, False, 0)
    cuda = suite.device.startswith("cuda")
    model = _plain_model(scenario, model_path, torch.bfloat16 if cuda else torch.float32)
    if scenario.adapter == "lora":
        model = get_peft_model(model, lora_config(PLAIN_LORA_DROPOUT))
    args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=batch_of(scenario, suite),
        gradient_accumulation_steps=accumulation_of(scenario, suite),
        max_steps=meter.warmup + STEPS[0],
        learning_rate=1e-4,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=scenario.precision == "bf16",
        use_cpu=not cuda,
        activation_checkpointing=bool(scenario.gradient_checkpointing),
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=data.train, data_collator=collator, callbacks=[meter])
    trainer.train()


def run_unsloth(scenario: Scenario, suite: Suite, model_path: Path, work: Path, meter: harness.StepMeter) -> None:
    """Unsloth's own loader and LoRA, trained by TRL's SFTTrainer as Unsloth's examples do (GPU only)."""
    import unsloth  # noqa: F401  (patches transformers/TRL on import)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(str(model_path), max_seq_length=suite.max_length, dtype=None)
    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=linear)
    args = SFTConfig(
        output_dir=str(work / "unsloth"),
        per_device_train_batch_size=batch_of(scenario, suite),
        gradient_accumulation_steps=accumulation_of(scenario, suite),
        max_steps=meter.warmup + STEPS[0],
        max_length=suite.max_length,
        packing=bool(scenario.packing),
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_records(suite)),
        processing_class=load_tokenizer(),
        callbacks=[meter],
    )
    trainer.train()


RUNNERS = {"llmft": run_llmft, "trl": run_trl, "hf": run_hf, "unsloth": run_unsloth}
STEPS = [5]  # measured steps per scenario (set from --steps)
PACKED_BATCH = [1]  # packed rows per step (set in main from the data, see `packed_batch`)
PLUMBING = [False]  # --plumbing: run GPU scenarios on CPU (a small shape) to check they work, not to measure


# ----------------------------------------------------------------------------------------------------- main
def matmul_parameters(model: Any) -> tuple[int, int]:
    """(frozen, trained) weights of the model's matmuls (every Linear, the output head included)."""
    frozen = trained = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            if module.weight.requires_grad:
                trained += module.weight.numel()
            else:
                frozen += module.weight.numel()
    return frozen, trained


class FlopsMeter(harness.StepMeter):
    """StepMeter that also reads the model's matmul weights and shape at the start, for MFU."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.weights = matmul_parameters(model)
        head = model.get_output_embeddings()
        self.head = (head.weight.numel(), bool(head.weight.requires_grad)) if head is not None else (0, False)
        config = model.config
        self.layers, self.hidden = config.num_hidden_layers, config.hidden_size
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.attention_ratio = config.num_attention_heads * head_dim / config.hidden_size
        self.compute_dtype = "bfloat16" if args.bf16 or next(model.parameters()).dtype == torch.bfloat16 else "float32"
        super().on_train_begin(args, state, control, model=model, **kwargs)

    def flops(self, step: dict[str, float]) -> float:
        frozen, trained = self.weights
        return harness.train_flops(
            step["tokens"], step["squares"], frozen, trained, self.layers, self.hidden, self.attention_ratio
        )

    def useful_flops(self, step: dict[str, float]) -> float:
        """The model flops less the output head on positions without a label (the loss does not need them)."""
        size, trained = self.head
        unlabelled = max(step["tokens"] - step.get("loss_tokens", step["tokens"]), 0)
        return self.flops(step) - (6 if trained else 4) * size * unlabelled


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and value != ()


@dataclass
class Measured:
    """A scenario's measured steps (pooled over rounds), memory, and what the meter saw of the model."""

    steps: list[dict[str, float]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    meter: FlopsMeter | None = None
    failed: str | None = None


def measure(scenario: Scenario, suite: Suite, ctx: dict[str, Any], into: Measured) -> None:
    """Train the scenario once and add its measured steps (and its peak memory) to `into`."""
    meter = FlopsMeter(ctx["warmup"], pad_token_id=ctx["pad"])
    work = Path(tempfile.mkdtemp(prefix=f"bench-{scenario.name}-"))
    start = harness.reset_peak_memory()
    try:
        RUNNERS[scenario.runner](scenario, suite, ctx["model"], work, meter)
    except Exception as exc:  # one broken scenario must not lose the others' figures
        logging.getLogger("bench").exception("scenario %s failed", scenario.name)
        into.failed = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        return
    finally:
        shutil.rmtree(work, ignore_errors=True)
    memory = {"rss_start": start, **harness.peak_memory()}
    memory["peak_rss_delta"] = memory["peak_rss"] - start
    if not into.memory or memory["peak_rss_delta"] > into.memory["peak_rss_delta"]:
        into.memory = memory
    into.steps.extend(meter.measured())
    into.meter = meter


def result_of(scenario: Scenario, suite: Suite, group: str, baseline: str, measured: Measured | None, ctx: dict):
    settings = {k: v for k, v in vars(scenario).items() if k not in ("name", "needs") and _is_set(v)}
    settings.update(
        shape=suite.shape, dataset=suite.dataset, max_length=suite.max_length, batch=batch_of(scenario, suite)
    )
    result = harness.Result(scenario.name, group, baseline, settings)
    reason = missing(scenario, suite.device)
    if reason or measured is None or measured.failed or measured.meter is None:
        result.skipped = reason or (measured.failed if measured else "not run")
        return result
    meter = measured.meter
    peak = H100_BF16_PEAK if suite.device.startswith("cuda") else ctx["peaks"].get(meter.compute_dtype)
    result.settings["compute_dtype"] = meter.compute_dtype
    result.figures = harness.summarize(measured.steps, meter.flops, peak, meter.useful_flops)
    result.memory = measured.memory
    result.steps = measured.steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu-tiny")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the suite's)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="override the suite's model shape")
    parser.add_argument("--only", nargs="*", default=None, help="run only these scenarios (and their baselines)")
    parser.add_argument("--groups", nargs="*", default=None, help="run only these groups")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="run every scenario this many times, pooling steps")
    parser.add_argument("--plumbing", action="store_true", help="run CUDA scenarios on CPU to check them (no figures)")
    parser.add_argument("--tag", default="", help="suffix of the output files (e.g. the groups run)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, see --help)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--list", action="store_true", help="list the suites' scenarios and exit")
    parser.add_argument("--unsloth-first", action="store_true", help="import Unsloth before transformers (see above)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    if args.list:
        for name, make in SUITES.items():
            suite = make()
            print(f"{name}: {suite.shape} on {suite.dataset}, batch {suite.batch}, max_length {suite.max_length}")
            for group, baseline, names in suite.groups:
                print(f"  {group:<10} baseline {baseline:<22} {' '.join(n for n in names if n != baseline)}")
        return
    suite = SUITES[args.suite]()
    suite.device = args.device or suite.device
    suite.shape = args.shape or suite.shape
    suite.batch = args.batch or suite.batch
    suite.samples = args.samples or suite.samples
    suite.max_length = args.max_length or suite.max_length
    if suite.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"suite {args.suite}: no CUDA device here; every scenario is skipped.")
    STEPS[0] = args.steps
    PLUMBING[0] = args.plumbing
    if not suite.device.startswith("cuda"):
        # One thread by default: on a shared machine its CPU time is steady even when other jobs take the cores.
        torch.set_num_threads(args.threads or 1)
    if args.steps < 5:
        print(f"note: {args.steps} measured steps (the tables need at least 5)")

    tokenizer = load_tokenizer()
    cuda = suite.device.startswith("cuda")
    cache = Path(tempfile.gettempdir()) / "llmft-bench-models"
    ctx: dict[str, Any] = {"warmup": args.warmup, "pad": tokenizer.pad_token_id}
    ctx["model"] = model_dir(suite.shape, tokenizer, torch.bfloat16 if cuda else torch.float32, cache)
    ctx["packed_batch"] = PACKED_BATCH[0] = packed_batch(suite, tokenizer)
    from matmul_peak import matmul_peak

    measured = matmul_peak(suite.device, (1024, 2048, 4096) if cuda else (1024, 2048, 3072), repeat=3)
    ctx["peaks"] = measured
    info = harness.machine()
    print(harness.machine_line(info))
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in measured.items()))
    stem = args.suite + (f"-{args.shape}" if args.shape else "") + (f"-{args.tag}" if args.tag else "")
    extra = {
        "suite": args.suite,
        "shape": {"name": suite.shape, **SHAPES[suite.shape]},
        "dataset": suite.dataset,
        "batch": suite.batch,
        "packed_batch": ctx["packed_batch"],
        "max_length": suite.max_length,
        "warmup": args.warmup,
        "measured_steps": args.steps,
        "rounds": args.rounds,
        "matmul_peak_flops": measured,
        "mfu_peak": "989 TFLOP/s (bf16 dense)" if cuda else "measured matmul peak of the compute dtype",
    }
    by_name = {s.name: s for s in suite.scenarios}
    selected: list[tuple[str, str, list[str]]] = []
    for group, baseline, names in suite.groups:
        if args.groups and group not in args.groups:
            continue
        if args.only:
            if not set(names) & set(args.only):
                continue
            names = [n for n in names if n in args.only or n == baseline]
        selected.append((group, baseline, names))
    order = list(dict.fromkeys(n for _, _, names in selected for n in names))
    runnable = [n for n in order if missing(by_name[n], suite.device) is None]
    pooled = {name: Measured() for name in runnable}
    # Rounds run every scenario once each, in turn, so a slow spell of the machine spreads over all of them.
    for round_index in range(args.rounds):
        for name in runnable:
            if pooled[name].failed:
                continue
            measure(by_name[name], suite, ctx, pooled[name])
            steps = pooled[name].steps
            status = pooled[name].failed or (f"{len(steps)} steps, last {steps[-1]['seconds']:.3f} s" if steps else "")
            print(f"  round {round_index + 1} {name:<26} {status}", flush=True)
    results = [
        result_of(by_name[name], suite, group, baseline, pooled.get(name), ctx)
        for group, baseline, names in selected
        for name in names
    ]
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    harness.write_json(args.out / f"{stem}.json", info, results, extra)
    table = harness.markdown_table(results, cpu_time=not cuda)
    header = f"{stem}: {suite.shape} on {suite.dataset}, batch {suite.batch}, max_length {suite.max_length}\n\n"
    (args.out / f"{stem}.md").write_text(header + harness.machine_line(info) + "\n\n" + table)
    print(table)
    print(f"load average at end: {info['load_average_end'][0]}")


if __name__ == "__main__":
    main()
