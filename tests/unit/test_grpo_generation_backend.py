"""`method.generation_backend`: TRL's generate by default, colocated vLLM where it can run, a clear error otherwise."""

from __future__ import annotations

import pytest

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError
from llm_finetuning.methods import grpo
from llm_finetuning.models import merged_generation

pytestmark = pytest.mark.unit


def raw(**method) -> dict:
    return {
        "data": {"train": {"path": "x.jsonl", "format": "prompt_only"}},
        "method": {"name": "grpo", "rewards": [{"name": "reasoning_tags"}], **method},
        "training": {"per_device_batch_size": 8},
    }


def config(**method) -> Config:
    return Config.model_validate(raw(**method))


def test_transformers_generation_adds_nothing():
    assert config().method.generation_backend == "transformers"
    assert grpo.generation_arguments(config()) == {}


def test_vllm_needs_the_package_then_a_gpu(monkeypatch, fake_device):
    chosen = config(generation_backend="vllm", vllm_gpu_memory_utilization=0.4)
    monkeypatch.setattr(grpo, "is_installed", lambda name: False)
    with pytest.raises(ConfigError, match=r"method.generation_backend: vllm is not installed.*llm-finetuning\[vllm\]"):
        grpo.generation_arguments(chosen)
    monkeypatch.setattr(grpo, "is_installed", lambda name: name == "vllm")
    fake_device(device="cpu")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        grpo.generation_arguments(chosen)
    fake_device(device="cuda", bf16=True)
    assert grpo.generation_arguments(chosen) == {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": 0.4,
    }


def test_backend_names_and_memory_share_are_validated():
    with pytest.raises(ValueError, match="generation_backend"):
        config(generation_backend="sglang")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        config(generation_backend="vllm", vllm_gpu_memory_utilization=1.5)


def test_merged_generation_weights_need_plain_unquantized_lora():
    assert config().method.generation_weights == "adapter"
    with pytest.raises(ValueError, match="generation_weights: merged.*vLLM loads merged weights itself"):
        config(generation_backend="vllm", generation_weights="merged")
    for adapter, model, named in (
        ({"method": "dora"}, {}, "adapter.method: dora"),
        ({"method": "ia3"}, {}, "adapter.method: ia3"),
        ("full", {}, "adapter.method: full"),
        ({"method": "lora"}, {"quantization": "nf4"}, "model.quantization"),
    ):
        with pytest.raises(ValueError, match=f"generation_weights: merged.*{named}"):
            Config.model_validate({**raw(generation_weights="merged"), "adapter": adapter, "model": model})


@pytest.mark.parametrize(
    ("section", "refused"),
    [
        ({"strategy": "fsdp"}, True),
        ({"strategy": "fsdp", "fsdp_sharding": "hybrid_shard"}, True),
        ({"strategy": "deepspeed", "zero_stage": 3}, True),
        ({"strategy": "fsdp", "fsdp_sharding": "shard_grad_op"}, False),
        ({"strategy": "deepspeed", "zero_stage": 2}, False),
        ({"strategy": "ddp"}, False),
    ],
)
def test_merged_generation_weights_refuse_sharded_parameters(monkeypatch, section, refused):
    chosen = config(generation_weights="merged").model_copy()
    chosen.distributed = chosen.distributed.model_copy(update=section)
    installed = []
    monkeypatch.setattr(merged_generation, "sample_from_merged", installed.append)
    monkeypatch.setattr(merged_generation.distributed, "world_size", lambda: 2)
    if refused:
        with pytest.raises(ConfigError, match="whole copy of the adapted weights on every device"):
            merged_generation.use_merged_weights("model", chosen)
        assert installed == []
    else:
        merged_generation.use_merged_weights("model", chosen)
        assert installed == ["model"]
    monkeypatch.setattr(merged_generation.distributed, "world_size", lambda: 1)  # one process: the section is ignored
    merged_generation.use_merged_weights("one", chosen)
    assert installed[-1] == "one"
