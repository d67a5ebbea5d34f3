"""`method.generation_backend`: TRL's generate by default, colocated vLLM where it can run, a clear error otherwise."""

from __future__ import annotations

import pytest

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError
from llm_finetuning.methods import grpo

pytestmark = pytest.mark.unit


def config(**method) -> Config:
    return Config.model_validate(
        {
            "data": {"train": {"path": "x.jsonl", "format": "prompt_only"}},
            "method": {"name": "grpo", "rewards": [{"name": "reasoning_tags"}], **method},
            "training": {"per_device_batch_size": 8},
        }
    )


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
