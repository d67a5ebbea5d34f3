"""Memory components of the estimate against hand-computed values, and every warning of the plan."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import UserError
from llm_finetuning.estimate import activations
from llm_finetuning.estimate.gpus import find_gpu, load_table
from llm_finetuning.estimate.memory import CUDA_CONTEXT_BYTES, FRAGMENTATION, breakdown
from llm_finetuning.estimate.plan import Notes, _grpo_option, build_plan
from llm_finetuning.estimate.shapes import shape_from_config

pytestmark = pytest.mark.unit

# A small Llama: every linear weight has >= 4096 values (8-bit optimizer states apply to all of them).
H, L, HEADS, KV_HEADS, INTER, V = 128, 2, 4, 4, 256, 1000
SHAPE = shape_from_config(
    {
        "model_type": "llama",
        "hidden_size": H,
        "num_hidden_layers": L,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": INTER,
        "vocab_size": V,
        "max_position_embeddings": 4096,
    }
)
LINEAR = L * (4 * H * H + 3 * H * INTER)  # weights of the decoder layers' linear layers
P = SHAPE.total_params
REST = P - LINEAR  # embeddings, LM head, norms


def config(**sections: Any) -> Config:
    data: dict[str, Any] = {
        "model": {"name": "unused", "dtype": "bfloat16"},
        "adapter": "full",
        "data": {"train": {"path": "x.jsonl", "format": "text"}, "max_length": 256},
        "method": "pretrain",
        "training": {"per_device_batch_size": 2},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return Config.model_validate(data)


def memory(cfg: Config, **kwargs: Any):
    plan = build_plan(cfg, SHAPE, **kwargs)
    return plan, breakdown(plan)


def test_parameter_totals_by_hand():
    assert P == 2 * V * H + L * (4 * H * H + 3 * H * INTER + 2 * H) + H


@pytest.mark.parametrize(("dtype", "bytes_per"), [("float32", 4), ("bfloat16", 2), ("float16", 2)])
def test_full_weights_gradients_and_adam_follow_the_dtype(dtype, bytes_per):
    _, mem = memory(config(model={"dtype": dtype}, training={"optimizer": "adamw_torch"}))
    c = mem.components
    assert c["weights"] == P * bytes_per
    assert c["gradients"] == P * bytes_per
    assert c["optimizer states"] == 2 * P * bytes_per  # torch AdamW keeps both moments in the parameter's dtype
    assert c["optimizer step buffers"] == P * bytes_per  # foreach step: one parameter-sized buffer
    _, fused = memory(config(model={"dtype": dtype}, training={"optimizer": "adamw_torch_fused"}))
    assert fused.components["optimizer step buffers"] == 0


def test_quantized_weights_by_hand():
    lora = {"adapter": {"method": "lora", "r": 8}}
    _, int8 = memory(config(model={"quantization": "int8"}, **lora))
    rows = L * (4 * H + 2 * INTER + H)  # output features of q, k, v, o, gate, up, down
    assert int8.components["weights"] == LINEAR * 1 + 4 * rows + 4 * REST  # the rest is upcast to float32
    _, nf4 = memory(config(model={"quantization": "nf4", "double_quantization": False}, **lora))
    assert nf4.components["weights"] == LINEAR * 0.5 + 4 * LINEAR / 64 + 4 * REST
    _, nf4_double = memory(config(model={"quantization": "nf4"}, **lora))
    assert nf4_double.components["weights"] == pytest.approx(
        LINEAR * 0.5 + LINEAR / 64 + 4 * LINEAR / 64 / 256 + 4 * REST
    )
    _, fp4 = memory(config(model={"quantization": "fp4"}, **lora))
    assert fp4.components["weights"] == nf4_double.components["weights"]


def test_lora_adapters_are_float32_with_float32_adam():
    plan, mem = memory(config(adapter={"method": "lora", "r": 8}))
    per_layer = 8 * (4 * (H + H) + 2 * (H + INTER) + (INTER + H))
    n = L * per_layer
    assert plan.params.trainable_count == n
    c = mem.components
    assert (c["weights"], c["adapter weights"], c["gradients"], c["optimizer states"]) == (2 * P, 4 * n, 4 * n, 8 * n)


def test_8bit_adam_keeps_two_bytes_per_parameter():
    plan, mem = memory(config(training={"optimizer": "adamw_8bit"}))
    expected = 0
    for shape, count, _ in plan.params.trainable:
        n = math.prod(shape)
        expected += count * (2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n)  # small tensors stay 32-bit
    assert mem.components["optimizer states"] == expected
    big = sum(math.prod(s) * c for s, c, _ in plan.params.trainable if math.prod(s) >= 4096)
    assert 2.0 <= (expected - 8 * (P - big)) / big <= 2.04
    assert mem.components["optimizer step buffers"] == 0
    _, paged = memory(config(training={"optimizer": "paged_adamw_8bit"}))
    assert paged.components["optimizer states"] == expected


def test_adafactor_and_sgd_states():
    _, sgd = memory(config(training={"optimizer": "sgd"}))
    assert sgd.components["optimizer states"] == 0
    plan, ada = memory(config(training={"optimizer": "adafactor"}))
    expected = 2 * sum(c * (s[0] + s[1] if len(s) == 2 else s[0]) for s, c, _ in plan.params.trainable)
    assert ada.components["optimizer states"] == expected  # row and column second moments, bf16


def test_zero_and_fsdp_divide_by_the_devices():
    one = memory(config())[1].components
    n = 4
    z1 = memory(config(), gpus=n, sharding="zero1")[1].components
    assert (z1["optimizer states"], z1["gradients"], z1["weights"]) == (
        one["optimizer states"] / n,
        one["gradients"],
        one["weights"],
    )
    z2 = memory(config(), gpus=n, sharding="zero2")[1].components
    assert (z2["gradients"], z2["weights"]) == (one["gradients"] / n, one["weights"])
    for name in ("zero3", "fsdp"):
        z3 = memory(config(), gpus=n, sharding=name)[1].components
        assert z3["weights"] == one["weights"] / n
        assert z3["gradients"] == one["gradients"] / n and z3["optimizer states"] == one["optimizer states"] / n
        assert z3["gathered layer weights"] == 2 * SHAPE.layer_params * 2  # two layers gathered at a time, bf16
    ddp = memory(config(), gpus=n)[1].components
    assert ddp["ddp gradient buckets"] == one["gradients"] and one["ddp gradient buckets"] == 0


def test_fp32_activations_of_a_layer_by_hand():
    plan, _ = memory(config(model={"dtype": "float32"}, training={"mixed_precision": "no"}), device="cpu")
    # two norms (fp32 input, normalised value, 4 bytes of 1/rms, output), q/k/v, the attention output (the kernel's,
    # already in o_proj's layout: no copy), 4 bytes of lse per head, gate/act/up/product of the MLP
    per_token = 2 * (4 * H + 4 * H + 4 + 4 * H) + 3 * 4 * H + 4 * H + 4 * HEADS + 4 * 4 * INTER
    assert activations.layer_bytes_per_token(plan) == per_token
    tokens = 2 * 256
    outside = 8 * H + 4 + 2 * (H // HEADS) * 4  # the final norm; rotary cos and sin, shared by the layers
    assert activations.saved_activations(plan, False) == tokens * (L * per_token + outside)
    assert activations.saved_activations(plan, True) == tokens * (L * 4 * H + outside)


def test_checkpointing_lowers_the_peak_and_keeps_layer_inputs_only():
    _, off = memory(config(data={"max_length": 2048}))
    _, on = memory(config(data={"max_length": 2048}, training={"gradient_checkpointing": True}))
    assert on.components["activations"] < off.components["activations"] / 5
    assert on.components["recomputed layer"] > 0 == off.components["recomputed layer"]
    assert on.peak_allocated < off.peak_allocated
    assert off.activations_by_checkpointing == on.activations_by_checkpointing  # both shown whatever is chosen


def test_peak_is_the_largest_phase_and_cuda_adds_overhead():
    _, mem = memory(config())
    assert mem.peak_allocated == max(mem.phases.values())
    assert mem.total == pytest.approx(mem.peak_allocated * (1 + FRAGMENTATION) + CUDA_CONTEXT_BYTES)
    _, cpu = memory(config(model={"dtype": "float32"}), device="cpu")
    assert cpu.total == cpu.peak_allocated


def test_gradient_accumulation_holds_gradients_through_the_next_backward():
    _, one = memory(config())
    _, four = memory(config(training={"gradient_accumulation_steps": 4}))
    assert four.phases["backward"] - one.phases["backward"] == one.components["gradients"]


# --------------------------------------------------------------------------------- methods
def test_preference_methods_double_the_batch_and_keep_a_reference_copy():
    plan, mem = memory(config(method={"name": "dpo"}, data={"train": {"path": "x.jsonl", "format": "preference"}}))
    assert plan.sequences == 4 and plan.reference == "copy"
    assert mem.components["reference model"] == mem.components["weights"]
    pre = memory(config(method={"name": "dpo", "precompute_ref_log_probs": True}))[1]
    assert pre.components["reference model"] == 0
    lora = memory(config(method={"name": "kto"}, adapter={"method": "lora"}))
    assert lora[0].reference == "adapter" and lora[1].components["reference model"] == 0
    orpo = memory(config(method={"name": "orpo"}))[0]
    assert (orpo.sequences, orpo.reference, orpo.loss) == (4, "none", "full")
    reward = memory(config(method={"name": "reward"}))[0]
    assert reward.loss == "score" and reward.shape.head == "sequence_classification"


def grpo_config(**method: Any) -> Config:
    return config(
        method={"name": "grpo", "rewards": [{"name": "r", "function": "m:f"}], **method},
        training={"per_device_batch_size": 4, "gradient_accumulation_steps": 2},
        data={"train": {"path": "x.jsonl", "format": "prompt_only"}, "max_length": 128},
    )


def test_grpo_kv_cache_and_reference():
    plan, mem = memory(grpo_config(num_generations=8, max_completion_length=64))
    # TRL samples the completions of a whole step together: batch 4 x accumulation 2 sequences
    assert mem.components["kv cache"] == 8 * (128 + 64) * L * 2 * (KV_HEADS * H // HEADS) * 2
    assert mem.components["reference model"] == mem.components["weights"]  # full weights, beta > 0
    assert "generation" in mem.phases
    assert memory(grpo_config(beta=0.0))[1].components["reference model"] == 0


def test_grpo_merged_sampling_keeps_a_copy_of_the_adapted_weights():
    def lora_grpo(**method: Any) -> Config:
        return config(
            adapter={"method": "lora", "r": 8, "target_modules": ["q_proj", "down_proj"]},
            method={"name": "grpo", "num_generations": 2, "rewards": [{"name": "r", "function": "m:f"}], **method},
            data={"train": {"path": "x.jsonl", "format": "prompt_only"}, "max_length": 128},
        )

    merged, adapter = (memory(lora_grpo(generation_weights=w))[1] for w in ("merged", "adapter"))
    assert "merged generation weights" not in adapter.components
    copy = L * (H * H + INTER * H) * 2  # q_proj and down_proj of each layer, in bf16
    assert merged.components["merged generation weights"] == copy
    # held through every phase, training included: the buffers keep their addresses between steps
    assert all(merged.phases[p] - adapter.phases[p] == copy for p in adapter.phases)
    ppo = {"name": "ppo", "reward_function": "m:f", "max_new_tokens": 8, "generation_weights": "merged"}
    ppo_config = config(adapter={"method": "lora", "r": 8, "target_modules": ["q_proj", "down_proj"]}, method=ppo)
    assert memory(ppo_config)[1].components["merged generation weights"] == copy  # PPO's rollouts sample too


def test_grpo_options_missing_from_the_section_fall_back_with_a_warning():
    notes = Notes(quiet=True)
    bare = SimpleNamespace(method=SimpleNamespace(name="grpo"))
    assert _grpo_option(bare, "num_generations", notes) == 8
    assert _grpo_option(bare, "max_completion_length", notes) == 256
    assert _grpo_option(bare, "max_prompt_length", notes) is None
    assert notes.warnings == [
        "method.num_generations: not in this config's GRPO section; the default 8 assumed",
        "method.max_completion_length: not in this config's GRPO section; the default 256 assumed",
    ]


def test_ppo_reward_model_value_head_and_generation(tmp_path):
    reward_dir = tmp_path / "rm"
    reward_dir.mkdir()
    (reward_dir / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, '
        '"intermediate_size": 128, "vocab_size": 1000}'
    )
    ppo = {"name": "ppo", "reward_model": str(reward_dir), "max_new_tokens": 32, "num_generations": 2}
    cfg = config(method=ppo, data={"train": {"path": "x.jsonl", "format": "prompt_only"}, "max_length": 64})
    plan, mem = memory(cfg)
    reward_params = 1000 * 64 + (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 64  # + the 1-output score head
    assert mem.components["reward model"] == reward_params * 2
    assert mem.components["kv cache"] == 2 * 2 * (64 + 32) * L * 2 * H * 2
    assert (plan.sequences, plan.seq_len, plan.scored) == (8, 96, 33)  # mini-batch, prompt + completion
    missing = {**ppo, "reward_model": str(tmp_path / "nowhere")}
    plan = build_plan(config(method=missing), SHAPE)
    assert "its memory is counted as a copy of the policy" in plan.notes.warnings[0]


# --------------------------------------------------------------------------------- warnings and errors
def test_warnings_of_the_plan():
    t4 = find_gpu("T4", load_table())
    assert "no bf16 support" in build_plan(config(), SHAPE, gpu=t4).notes.warnings[0]
    auto = build_plan(config(model={"dtype": "auto"}), SHAPE, gpu=t4)
    assert auto.weight_bytes == 4 and auto.autocast  # float32 weights, fp16 autocast on a T4
    assert (
        "eager keeps a seq x seq" in build_plan(config(model={"attn_implementation": "eager"}), SHAPE).notes.warnings[0]
    )
    long = build_plan(config(data={"max_length": 8192}), SHAPE).notes.warnings
    assert "exceed the model's max_position_embeddings (4096)" in long[0]
    assert "over 1 device saves nothing" in build_plan(config(), SHAPE, sharding="zero3").notes.warnings[0]
    ds = build_plan(config(training={"extra": {"deepspeed": "missing.json"}}), SHAPE)
    assert ds.sharding == "zero2" and "cannot read `missing.json`" in ds.notes.warnings[0]


def test_sharding_from_the_config(tmp_path):
    fsdp = build_plan(config(training={"extra": {"fsdp": "full_shard auto_wrap"}}), SHAPE, gpus=2)
    assert fsdp.sharding == "zero3"
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 1}}')
    assert build_plan(config(training={"extra": {"deepspeed": str(ds)}}), SHAPE, gpus=2).sharding == "zero1"
    assert (
        build_plan(config(training={"extra": {"fsdp": "full_shard"}}), SHAPE, gpus=2, sharding="none").sharding
        == "none"
    )


def test_bad_sharding_and_devices():
    with pytest.raises(UserError, match="--sharding: `zero4`"):
        build_plan(config(), SHAPE, sharding="zero4")
    with pytest.raises(UserError, match="--gpus: must be at least 1"):
        build_plan(config(), SHAPE, gpus=0)
