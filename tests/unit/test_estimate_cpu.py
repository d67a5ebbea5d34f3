"""The estimate on CPU and the code paths it follows: autocast as the toolkit resolves it, the plain LM head,
padding-free rows and per-example attention, LoRA dropout, Liger; and each layer's formula against the tensors
autograd really keeps for the backward pass of the same small model."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from llm_finetuning import precision
from llm_finetuning.config.adapters import FullAdapter, LoraAdapter
from llm_finetuning.config.schema import Config
from llm_finetuning.estimate import activations, codepaths, head
from llm_finetuning.estimate.plan import build_plan
from llm_finetuning.estimate.shapes import LOGIT_TRANSFORMS, shape_from_config

pytestmark = pytest.mark.unit

H, L, HEADS, INTER, V = 128, 2, 4, 256, 1000


def llama(kv_heads: int = HEADS, hidden: int = H) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": L,
        "num_attention_heads": HEADS,
        "num_key_value_heads": kv_heads,
        "intermediate_size": INTER,
        "vocab_size": V,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }


SHAPE = shape_from_config(llama())


def config(**sections: Any) -> Config:
    data: dict[str, Any] = {
        "model": {"name": "unused", "dtype": "float32"},
        "adapter": "full",
        "data": {"train": {"path": "x.jsonl", "format": "alpaca"}, "max_length": 256},
        "method": "sft",
        "training": {"per_device_batch_size": 2},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return Config.model_validate(data)


def note(plan, start: str) -> str:
    return next(m for _, m in plan.notes.items if m.startswith(start))


# --------------------------------------------------------------------------------- autocast on CPU
@pytest.mark.parametrize("native", [True, False])
def test_cpu_auto_precision_follows_this_machines_bf16_like_training(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    plan = build_plan(config(model={"dtype": "auto"}), SHAPE, device="cpu")
    assert plan.dtype == "float32" and plan.autocast is native and plan.act_bytes == (2 if native else 4)
    text = note(plan, "training.mixed_precision auto on CPU")
    assert ("bf16 autocast" in text) is native and "this machine's CPU" in text
    from llm_finetuning.models import fast_path  # training's own resolution, on the same CPU flags

    assert fast_path.precision_choice("auto", fast_path.Capabilities(device="cpu", bf16=native), H).value == (
        "bf16" if native else "no"
    )


def test_cpu_precision_for_narrow_models_a_described_cpu_and_explicit_settings(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    narrow = build_plan(config(), shape_from_config(llama(hidden=64)), device="cpu")
    assert not narrow.autocast and "hidden size 64 < 128" in note(narrow, "training.mixed_precision")

    def unread() -> bool:
        raise AssertionError("this machine's flags must not be read for a described CPU")

    monkeypatch.setattr(precision, "cpu_has_native_bf16", unread)
    described = build_plan(config(), SHAPE, device="cpu", cpu_bf16=True)
    assert described.autocast and "the CPU described" in note(described, "training.mixed_precision")
    assert not build_plan(config(), SHAPE, device="cpu", cpu_bf16=False).autocast
    assert build_plan(config(training={"mixed_precision": "bf16"}), SHAPE, device="cpu").autocast
    assert not build_plan(config(training={"mixed_precision": "no"}), SHAPE, device="cpu").autocast
    fp16 = build_plan(config(training={"mixed_precision": "fp16"}), SHAPE, device="cpu")
    assert "needs a CUDA GPU" in fp16.notes.warnings[0]
    on = activations.saved_activations(described, False)
    assert on < activations.saved_activations(build_plan(config(), SHAPE, device="cpu", cpu_bf16=False), False)


# --------------------------------------------------------------------------------- the plain LM head
def grpo(prompt: int) -> Config:
    return config(
        adapter={"method": "lora"},
        method={
            "name": "grpo",
            "rewards": [{"name": "r", "function": "m:f"}],
            "max_prompt_length": prompt,
            "num_generations": 4,
        },
        data={"train": {"path": "x.jsonl", "format": "prompt_only"}},
        training={"per_device_batch_size": 4, "mixed_precision": "no"},
    )


def test_plain_head_keeps_float32_log_probs_of_the_labelled_positions_only():
    short, long = (build_plan(grpo(p), SHAPE, device="cpu") for p in (64, 512))
    assert short.loss == long.loss == "plain"
    completion = short.scored  # GRPO labels the completion only (default 256 tokens)
    kept, forward, backward = head.head_and_loss(short)
    assert kept == 4 * short.sequences * completion * V  # the frozen head keeps no input
    assert head.head_and_loss(long)[0] == kept  # longer prompts: more activations, not a larger head
    assert activations.saved_activations(long, False) > activations.saved_activations(short, False)
    assert forward == 2 * kept + short.tokens * H * 4  # entropy's exp and product (its graph kept); hidden states
    assert backward == 2 * kept  # the log-probs' gradient and the logits' gradient beside the log-probs
    assert "plain head on CPU" in note(short, "LM head")

    sft = build_plan(config(training={"mixed_precision": "bf16"}), SHAPE, device="cpu")  # full: the head trains
    n = 2 * 256
    kept, _, backward = head.head_and_loss(sft)
    assert kept == 4 * n * V + 2 * n * H  # log-probs + the head's bf16 input
    assert backward == max(8 * n * V, (2 - 4) * n * V + 2 * n * H + V * H * (4 + 2))


def test_gpus_and_models_that_change_their_logits_keep_trls_head():
    assert build_plan(config(), SHAPE, device="cuda").loss == "fused"
    capped = shape_from_config({**llama(), "final_logit_softcapping": 30.0})
    plan = build_plan(config(), capped, device="cpu")
    assert plan.loss == "fused" and "soft-caps or scales" in note(plan, "LM head")
    sharded = build_plan(config(), SHAPE, device="cpu", gpus=2, sharding="zero3")
    assert sharded.loss == "fused"
    assert build_plan(config(method={"name": "dpo"}), SHAPE, device="cpu").loss == "fused"


# --------------------------------------------------------------------------------- padding-free rows
def test_padding_free_sft_attends_per_example_and_the_cpu_math_kernel_keeps_scores():
    short = build_plan(config(data={"max_length": 128}, training={"mixed_precision": "no"}), SHAPE, device="cpu")
    assert short.padding_free and short.per_example_attention and short.math_attention == 128
    q = H  # kv heads are repeated to the query heads
    assert activations.attention_bytes(short) == 4 * (q + 2 * q) + 4 * HEADS * 128 + 4 * q
    long = build_plan(config(data={"max_length": 512}), SHAPE, device="cpu")
    assert long.math_attention == 0 and "examples assumed 512 tokens long" in note(long, "attention")
    packed = build_plan(config(data={"max_length": 512, "packing": True}), SHAPE, device="cpu")
    assert packed.math_attention == codepaths.CPU_MATH_MAX_LENGTH  # short packed examples: the worst case
    gpu = build_plan(config(data={"max_length": 128}), SHAPE, device="cuda")
    # on CUDA the fast path's varlen flash kernel: one call per layer, no per-example sdpa, no score matrix
    assert gpu.padding_free and not gpu.per_example_attention and gpu.math_attention == 0
    assert "llmft_torch_varlen" in note(gpu, "data.padding_free")
    assert gpu.tokens == build_plan(config(data={"max_length": 128, "padding_free": False}), SHAPE).tokens
    for padded in (
        config(method={"name": "pretrain"}, data={"train": {"path": "x.jsonl", "format": "text"}}),
        config(training={"per_device_batch_size": 1}),
        config(data={"padding_free": False}),
        config(model={"attn_implementation": "eager"}),
    ):
        assert not build_plan(padded, SHAPE, device="cpu").padding_free
    qlora = config(model={"quantization": "nf4"}, adapter={"method": "lora"})
    assert not build_plan(qlora, SHAPE, device="cpu").padding_free and build_plan(qlora, SHAPE).padding_free


@pytest.mark.parametrize(
    ("extra", "per_example", "plain"),
    [
        ({}, True, True),
        ({"model_type": "mistral"}, False, True),  # transformers' default sliding window
        ({"model_type": "mistral", "sliding_window": None}, True, True),
        ({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}, True, True),
        ({"model_type": "gemma2"}, False, False),  # local layers, soft-capped logits by default
        ({"model_type": "gemma3_text"}, False, True),
        ({"final_logit_softcapping": 30.0}, True, False),
    ],
)
def test_which_models_attend_per_example_and_take_the_plain_head(extra, per_example, plain):
    shape = shape_from_config({**llama(), **extra})
    assert (shape.per_example_attention, shape.plain_head) == (per_example, plain)


def test_constants_shared_with_the_training_code():
    from llm_finetuning.models import lm_head, varlen_attention

    assert codepaths.CPU_MATH_MAX_LENGTH == varlen_attention.SDPA_MATH["max_length"]
    assert set(LOGIT_TRANSFORMS) == set(lm_head.LOGIT_TRANSFORMS)


# --------------------------------------------------------------------------------- LoRA dropout, Liger
def lora_plan(dropout: float, mixed: str, device: str, dtype: str = "float32"):
    cfg = config(
        model={"dtype": dtype},
        adapter={"method": "lora", "dropout": dropout},
        training={"mixed_precision": mixed},
        data={"padding_free": False},
    )
    return build_plan(cfg, SHAPE, device=device)


@pytest.mark.parametrize(("device", "mask"), [("cpu", 4), ("cuda", 1)])
def test_lora_dropout_under_autocast_adds_its_mask_per_adapted_input(device, mask):
    off, on = lora_plan(0.0, "bf16", device), lora_plan(0.05, "bf16", device)
    inputs = sum(lin.in_features for lin, _ in on.params.adapted)  # all-linear: q k v o gate up down
    assert inputs == 6 * H + INTER
    # lora_A keeps its bf16 copy either way; torch's dropout adds a float32 noise tensor on CPU, a bool mask on CUDA
    assert activations.layer_bytes_per_token(on) - activations.layer_bytes_per_token(off) == inputs * mask


def test_lora_dropout_without_autocast_keeps_a_dropped_copy_instead_of_sharing_the_input():
    off, on = lora_plan(0.0, "no", "cpu"), lora_plan(0.05, "no", "cpu")
    inputs = 6 * H + INTER
    # dropout 0: lora_A keeps the float32 norm outputs and MLP product themselves (once); 0.05: each adapted
    # layer keeps its dropped-out float32 input and the float32 noise, and nothing keeps the shared tensors
    shared = 2 * 4 * H + 4 * INTER
    assert activations.layer_bytes_per_token(on) - activations.layer_bytes_per_token(off) == inputs * 8 - shared


def test_liger_keeps_less_per_layer_on_cuda_only():
    plain = build_plan(config(model={"dtype": "bfloat16"}), SHAPE)
    liger = build_plan(config(model={"dtype": "bfloat16"}, training={"liger_kernel": True}), SHAPE)
    assert liger.liger and "RMSNorm keeps its input" in note(liger, "training.liger_kernel")
    # per norm: no float32 copy (4h) and no normalised value (2h); kept: its bf16 input (2h). MLP: no act(gate).
    saved = 2 * (4 * H + 2 * H - 2 * H) + 2 * INTER
    assert activations.layer_bytes_per_token(plain) - activations.layer_bytes_per_token(liger) == saved
    cpu = build_plan(config(training={"liger_kernel": True}), SHAPE, device="cpu")
    assert not cpu.liger and "need a CUDA GPU" in note(cpu, "training.liger_kernel")


# --------------------------------------------------------------------------------- against autograd
def _saved_bytes(kwargs: dict[str, Any], adapter: Any, mixed: str, per_example: bool) -> int:
    """Bytes of the tensors autograd keeps (parameters excluded, each storage once) over one forward pass."""
    from trl.trainer.utils import add_fused_lm_head

    from llm_finetuning.models.adapters import apply_adapter
    from llm_finetuning.models.lm_head import use_plain_lm_head
    from llm_finetuning.models.varlen_attention import use_varlen_attention

    shape = {k: v for k, v in kwargs["shape"].items() if k != "model_type"}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), attn_implementation="sdpa")
    add_fused_lm_head(model)
    model = apply_adapter(model, adapter)
    model.enable_input_require_grads()  # the first layer keeps what the others keep (as under checkpointing)
    assert not per_example or use_varlen_attention(model)
    assert use_plain_lm_head(types.SimpleNamespace(model=model))
    batch, length = kwargs["batch"], kwargs["length"]
    ids = torch.randint(0, V, (batch, length))
    positions = torch.arange(length).repeat(batch, 1)
    if per_example:
        ids, positions = ids.reshape(1, -1), positions.reshape(1, -1)
    labels = ids.clone()
    labels[positions == 0] = -100
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed == "bf16"),
    ):
        model(input_ids=ids, position_ids=positions, labels=labels, fused_lm_head=True)
    return sum(seen.values())


@pytest.mark.parametrize(
    ("adapter", "mixed", "per_example", "length", "kv"),
    [
        ({"method": "lora"}, "bf16", False, 128, HEADS),
        ({"method": "lora", "dropout": 0.05}, "bf16", False, 128, HEADS),
        ({"method": "lora"}, "no", False, 128, HEADS),
        ({"method": "lora", "dropout": 0.05}, "no", False, 128, HEADS),
        ("full", "bf16", False, 128, HEADS),
        ("full", "no", False, 128, HEADS),
        ({"method": "lora"}, "bf16", True, 128, 2),  # sdpa's math kernel per example
        ("full", "no", True, 128, 2),
        ({"method": "lora"}, "bf16", True, 256, 2),  # its flash kernel
    ],
)
def test_kept_for_the_backward_matches_autograd(adapter, mixed, per_example, length, kv):
    """Activations, the plain head's log-probs and autocast's weight copies, against what the model keeps (the
    estimate counts every position as labelled: one more per example than the shift leaves)."""
    shape = llama(kv_heads=kv)
    cfg = config(
        adapter=adapter,
        data={"max_length": length, "padding_free": per_example},
        training={"mixed_precision": mixed},
    )
    plan = build_plan(cfg, shape_from_config(shape), device="cpu")
    assert plan.per_example_attention is per_example and plan.loss == "plain"
    predicted = (
        activations.saved_activations(plan, False) + head.head_and_loss(plan)[0] + activations.weight_copies(plan)[0]
    )
    module = FullAdapter() if adapter == "full" else LoraAdapter(**{k: v for k, v in adapter.items() if k != "method"})
    measured = _saved_bytes({"shape": shape, "batch": 2, "length": length}, module, mixed, per_example)
    assert predicted == pytest.approx(measured, rel=0.005)
