"""The GPU table, time and cost, and where the estimate finds a model's config.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import UserError
from llm_finetuning.estimate import count_examples, estimate, find_gpu, load_table
from llm_finetuning.estimate.plan import Notes, build_plan
from llm_finetuning.estimate.shapes import shape_from_config
from llm_finetuning.estimate.throughput import flops_per_token

pytestmark = pytest.mark.unit

SHAPE_JSON = {
    "model_type": "qwen2",
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 512,
    "vocab_size": 5000,
    "tie_word_embeddings": True,
}


def config(tmp_path: Path, **sections: Any) -> Config:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(SHAPE_JSON))
    data: dict[str, Any] = {
        "model": {"name": str(model_dir), "dtype": "bfloat16"},
        "adapter": "full",
        "data": {"train": {"path": str(tmp_path / "train.jsonl"), "format": "text"}, "max_length": 512},
        "method": "pretrain",
        "training": {"per_device_batch_size": 4, "gradient_accumulation_steps": 2},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return Config.model_validate(data)


# --------------------------------------------------------------------------------------------- table
def test_shipped_table_has_the_common_gpus_and_matches_loosely():
    table = load_table()
    names = {g.name for g in table}
    assert {"A100-40GB", "A100-80GB", "H100-80GB", "H200", "L4", "RTX-4090"} <= names
    assert find_gpu("h100", table).name == "H100-80GB"
    assert find_gpu("H100 80GB", table).name == "H100-80GB"
    assert find_gpu("rtx_4090", table).memory_gib == 24.0


def test_unknown_gpu_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown GPU `H10`\. Did you mean H100-80GB or H100-PCIe\? Known: A100-40GB"):
        find_gpu("H10", load_table())
    with pytest.raises(UserError, match=r"unknown GPU `A1OO-80GB`\. Did you mean A100-80GB"):
        find_gpu("A1OO-80GB", load_table())


def test_own_table_and_its_errors(tmp_path):
    own = tmp_path / "gpus.yaml"
    own.write_text(
        yaml.safe_dump(
            {"gpus": [{"name": "X1", "memory_gib": 10, "tflops": 100, "bandwidth_tbs": 1, "usd_per_hour": 2}]}
        )
    )
    assert find_gpu("x1", load_table(own)).memory_bytes == 10 * 2**30
    bad = {"gpus": [{"name": "X1", "memory_gib": 10, "tflops": -1, "bandwidth_tbs": 1, "usd_per_hour": 2}]}
    own.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match=r"gpus\[0\] \(X1\): `tflops` must be a positive number"):
        load_table(own)
    own.write_text(yaml.safe_dump({"gpus": [{"name": "X1", "memory_gb": 10}]}))
    with pytest.raises(UserError, match="`memory_gib` must be a positive number"):
        load_table(own)
    own.write_text("gpus: {}")
    with pytest.raises(UserError, match="needs a non-empty `gpus:` list"):
        load_table(own)
    own.write_text("gpus: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_table(own)
    with pytest.raises(UserError, match="not found"):
        load_table(tmp_path / "absent.yaml")
    good = {"name": "X1", "memory_gib": 10, "tflops": 100, "bandwidth_tbs": 1, "usd_per_hour": 2, "price": 3}
    own.write_text(yaml.safe_dump({"gpus": [good]}))
    with pytest.raises(UserError, match="unknown key `price`"):
        load_table(own)


# ------------------------------------------------------------------------------------ time and cost
def test_flops_per_token_full_is_six_n_lora_four_n(tmp_path):
    shape = shape_from_config(SHAPE_JSON)
    body = 4 * shape.layer_linear_params
    attention = 2 * 512 * 256 * 4  # 2 x seq x query width x layers
    head = 2 * 256 * 5000
    full = build_plan(config(tmp_path), shape, notes=Notes(quiet=True))
    assert flops_per_token(full) == (6 * body + 3 * attention, 4 * head)  # the fused head recomputes its tile
    lora = build_plan(config(tmp_path, adapter={"method": "lora", "r": 8}), shape, notes=Notes(quiet=True))
    adapters = lora.params.trainable_count
    assert flops_per_token(lora) == (4 * body + 3 * attention + 6 * adapters, 3 * head)
    ckpt = build_plan(config(tmp_path, training={"gradient_checkpointing": True}), shape, notes=Notes(quiet=True))
    assert flops_per_token(ckpt)[0] == 8 * body + 4 * attention


def test_time_and_cost_per_epoch_from_counted_examples(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(1000)) + "\n")
    result = estimate(config(tmp_path), gpu="H100", gpus=2)
    t = result.throughput
    assert t.examples == 1000
    assert t.tokens_per_step == 4 * 512 * 2 * 2  # batch x length x accumulation x devices
    assert t.steps_per_epoch == math.ceil(1000 / (4 * 2 * 2))
    gpu = find_gpu("H100", load_table())
    assert t.seconds_per_step == pytest.approx(t.flops_per_step / (gpu.tflops * 1e12 * 0.35))
    assert t.seconds_per_epoch == pytest.approx(63 * t.seconds_per_step)
    assert t.cost(t.seconds_per_epoch) == pytest.approx(t.seconds_per_epoch / 3600 * gpu.usd_per_hour * 2)
    assert {row.gpu.name for row in result.by_gpu} == {g.name for g in load_table()}


def test_without_a_dataset_size_the_time_is_per_1000_steps(tmp_path):
    result = estimate(config(tmp_path, data={"train": {"hub": "org/data", "format": "text"}}), gpu="L4")
    t = result.throughput
    assert t.steps_per_epoch is None and t.seconds_per_epoch is None
    assert t.seconds_per_1k_steps == pytest.approx(1000 * t.seconds_per_step)
    assert any("pass --examples N" in m for _, m in result.notes.items)
    given = estimate(config(tmp_path, data={"train": {"hub": "org/data", "format": "text"}}), gpu="L4", examples=80)
    assert given.throughput.steps_per_epoch == 10


def test_count_examples_honours_max_samples_and_eval_split(tmp_path):
    rows = "".join(json.dumps({"text": str(i)}) + "\n" for i in range(10)) + "\n\n"
    (tmp_path / "train.jsonl").write_text(rows)
    notes = Notes(quiet=True)
    assert count_examples(config(tmp_path), notes) == 10
    capped = config(
        tmp_path, data={"train": {"path": str(tmp_path / "train.jsonl"), "format": "text", "max_samples": 7}}
    )
    assert count_examples(capped, notes) == 7
    assert count_examples(config(tmp_path, data={"eval_split": 0.2}), notes) == 8


def test_bad_numbers_are_user_errors(tmp_path):
    for kwargs, message in (
        ({"gpus": 0}, "--gpus: must be at least 1"),
        ({"utilization": 1.5}, r"--utilization: must be in \(0, 1\]"),
        ({"examples": 0}, "--examples: must be a positive number"),
        ({"device": "tpu"}, "device: `tpu`"),
    ):
        with pytest.raises(UserError, match=message):
            estimate(config(tmp_path), **kwargs)


# ------------------------------------------------------------------------------------- config.json
def test_hub_id_is_read_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--small" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(SHAPE_JSON))
    (tmp_path / "hub" / "models--org--small" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--small" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    result = estimate(config(tmp_path, model={"name": "org/small"}))
    assert result.source == "org/small (hub cache)"
    assert result.shape.total_params == shape_from_config(SHAPE_JSON).total_params


def test_missing_config_json_says_to_pass_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(
        UserError,
        match=r"`org/absent` is neither a local directory nor in the local Hugging Face cache.*--model-config",
    ):
        estimate(config(tmp_path, model={"name": "org/absent"}))
    with pytest.raises(UserError, match="No config.json at .*--model-config"):
        estimate(config(tmp_path), model_config=tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="broken.json: not a readable JSON file"):
        estimate(config(tmp_path), model_config=tmp_path / "broken.json")


def test_tiny_is_built_from_model_tiny(tmp_path):
    tiny = config(tmp_path, model={"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 3, "num_heads": 2}})
    result = estimate(tiny)
    shape = result.shape
    assert (shape.hidden_size, shape.num_layers, shape.intermediate_size, shape.vocab_size) == (32, 3, 128, 260)
    assert shape.tie_word_embeddings and result.source == "model.tiny"


def test_grpo_sampling_time_is_bound_by_memory_bandwidth(tmp_path):
    grpo = config(
        tmp_path,
        method={"name": "grpo", "rewards": [{"name": "r", "function": "m:f"}], "num_generations": 4},
        data={"train": {"path": str(tmp_path / "train.jsonl"), "format": "prompt_only"}, "max_length": 128},
        training={"per_device_batch_size": 4, "gradient_accumulation_steps": 1},
    )
    result = estimate(grpo, gpu="H100")
    shape, gpu = result.shape, result.gpu
    sequences, prompt, completion = 4, 128, 256
    kv_per_token = shape.num_layers * 2 * shape.kv_width * 2  # bf16 keys and values
    weights = shape.total_params * 2
    per_token = (weights + sequences * kv_per_token * (prompt + completion / 2)) / (gpu.bandwidth_tbs * 1e12 * 0.5)
    per_token += 0.25e-3 * shape.num_layers  # generate's launch overhead per layer and token
    stack = (
        2 * shape.num_layers * shape.layer_linear_params + 2 * (prompt + completion) * shape.q_width * shape.num_layers
    )
    prefill = sequences * prompt * stack / (gpu.tflops * 1e12 * 0.35)
    assert result.throughput.generation_seconds_per_step == pytest.approx(prefill + completion * per_token)
    assert result.memory.phases["generation"] > result.memory.components["kv cache"] > 0


def test_more_input_errors(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="list.json: expected a JSON object"):
        estimate(config(tmp_path), model_config=tmp_path / "list.json")
    own = tmp_path / "gpus.yaml"
    own.write_text(yaml.safe_dump({"gpus": [{"memory_gib": 10}]}))
    with pytest.raises(UserError, match=r"gpus\[0\] needs a `name`"):
        load_table(own)
    tiny = {"name": "tiny", "tokenizer": str(tmp_path)}
    with pytest.raises(UserError, match="model.tokenizer: no tokenizer.json in"):
        estimate(config(tmp_path, model=tiny))
    vocab = {"model": {"vocab": {"a": 0, "b": 1, "c": 2}}, "added_tokens": [{"id": 3, "content": "<pad>"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(vocab))
    assert estimate(config(tmp_path, model=tiny)).shape.vocab_size == 4


def test_packing_counts_examples_per_sequence_from_avg_tokens(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(640)))
    packed = config(
        tmp_path,
        method="sft",
        data={"packing": True, "train": {"path": str(tmp_path / "train.jsonl"), "format": "text"}},
    )
    plain = estimate(packed, gpu="H100")
    assert plain.throughput.steps_per_epoch == 640 // 8  # without --avg-tokens: one example per sequence
    assert any("without --avg-tokens" in m for _, m in plain.notes.items)
    assert estimate(packed, gpu="H100", avg_tokens=128).throughput.steps_per_epoch == 640 // (8 * 4)
    with pytest.raises(UserError, match="--avg-tokens: must be a positive number"):
        estimate(packed, avg_tokens=0)


def test_distributed_section_sets_sharding_and_offload(tmp_path):
    fsdp = config(tmp_path, distributed={"strategy": "fsdp", "cpu_offload": True})
    result = estimate(fsdp, gpus=4)
    c = result.memory.components
    assert result.plan.sharding == "zero3" and result.plan.offload == "all"
    assert c["weights"] == c["gradients"] == c["optimizer states"] == 0 < c["gathered layer weights"]
    assert any("kept in CPU memory" in m for _, m in result.notes.items)
    zero2 = estimate(config(tmp_path, distributed={"strategy": "deepspeed", "zero_stage": 2}), gpus=4)
    assert zero2.plan.sharding == "zero2"
    offloaded = estimate(config(tmp_path, distributed={"strategy": "deepspeed", "cpu_offload": True}), gpus=4)
    assert offloaded.memory.components["optimizer states"] == 0 < offloaded.memory.components["gradients"]
