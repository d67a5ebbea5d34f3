"""A Llama-3-70B-shaped config.json: full fine-tuning does not fit one 80 GB GPU, QLoRA r=16 does, at figures
in line with published ones; suggestions appear when it does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llm_finetuning.config.schema import Config
from llm_finetuning.estimate import estimate

pytestmark = pytest.mark.unit

GIB = 2**30
LLAMA3_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
}


@pytest.fixture
def config_json(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA3_70B))
    return path


def config(**sections: Any) -> Config:
    data: dict[str, Any] = {
        "model": {"name": "meta-llama/Meta-Llama-3-70B", "dtype": "bfloat16"},
        "adapter": "full",
        "data": {"train": {"path": "train.jsonl", "format": "alpaca"}, "max_length": 2048},
        "training": {"per_device_batch_size": 1, "gradient_checkpointing": True},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return Config.model_validate(data)


def test_70b_has_70b_parameters(config_json):
    result = estimate(config(), model_config=config_json, gpu="H100")
    assert result.plan.params.total == pytest.approx(70.55e9, rel=1e-3)  # the published 70.6B


def test_70b_full_fine_tuning_does_not_fit_one_80gb_gpu(config_json):
    result = estimate(config(), model_config=config_json, gpu="A100-80GB")
    assert result.fits is False
    # bf16 weights, gradients and both Adam moments: 8 bytes per parameter before any activation
    assert result.memory.peak_allocated > 8 * 70.55e9
    labels = [s.label for s in result.suggestions]
    assert any("LoRA" in label for label in labels) and any("shard over" in label for label in labels)
    sharded = next(s for s in result.suggestions if s.options and s.options[0].startswith("--gpus"))
    assert sharded.fits and sharded.options[1] == "--sharding zero3"
    again = estimate(config(), model_config=config_json, gpu="A100-80GB", gpus=int(sharded.options[0].split()[1]))
    assert again.fits is False  # plain data parallel copies the model on every device


def test_70b_qlora_r16_fits_an_h100_at_published_figures(config_json):
    qlora = config(model={"quantization": "nf4"}, adapter={"method": "lora", "r": 16})
    result = estimate(qlora, model_config=config_json, gpu="H100")
    assert result.fits is True
    assert result.plan.params.trainable_count == pytest.approx(207e6, rel=0.01)  # r=16 on every linear layer
    # Published QLoRA figures for 70B models at batch 1 are ~40-48 GB; PEFT's float32 embeddings and head add
    # 4 GB for Llama 3's 128k vocabulary.
    assert 40 * 1e9 < result.memory.peak_allocated < 56 * 1e9
    assert 33 * GIB < result.memory.components["weights"] < 42 * GIB
    assert not result.suggestions


def test_70b_qlora_without_checkpointing_does_not_fit_and_checkpointing_is_suggested(config_json):
    qlora = config(
        model={"quantization": "nf4"}, adapter={"method": "lora", "r": 16}, training={"gradient_checkpointing": False}
    )
    result = estimate(qlora, model_config=config_json, gpu="H100")
    assert result.fits is False
    first = result.suggestions[0]
    assert first.overrides == ["training.gradient_checkpointing=true"] and first.fits


def test_the_estimate_loads_no_model_code(config_json):
    # Only config.json is read: neither torch nor transformers is imported, which keeps a 70B estimate instant.
    code = (
        "import sys, json; from llm_finetuning.config.schema import Config;"
        "from llm_finetuning.estimate import estimate;"
        f"c = Config.model_validate(json.loads({json.dumps(json.dumps(config().model_dump(exclude_unset=True)))}));"
        f"r = estimate(c, model_config={str(config_json)!r}, gpu='H100');"
        "print(r.fits, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "False"]


def test_suggested_overrides_applied_by_the_config_loader_fit(config_json, tmp_path):
    from llm_finetuning.config import load_config

    path = tmp_path / "full.yaml"
    path.write_text(json.dumps(config().model_dump(mode="json", exclude_unset=True)))
    result = estimate(load_config(path), model_config=config_json, gpu="H100")
    together = next(s for s in result.suggestions if s.label == "all of these together")
    assert together.fits and "adapter.method=lora" in together.overrides
    again = estimate(load_config(path, together.overrides), model_config=config_json, gpu="H100")
    assert again.fits and again.memory.total == pytest.approx(together.total_bytes)


def test_smaller_micro_batches_keep_the_effective_batch(config_json):
    qlora = config(
        model={"quantization": "nf4"},
        adapter={"method": "lora", "r": 16},
        training={"per_device_batch_size": 8, "gradient_accumulation_steps": 2},
    )
    result = estimate(qlora, model_config=config_json, gpu="H100")
    assert result.fits is False
    smaller = next(s for s in result.suggestions if s.label.startswith("smaller micro-batches"))
    values = dict(o.split("=") for o in smaller.overrides)
    batch, accumulation = (
        int(values["training.per_device_batch_size"]),
        int(values["training.gradient_accumulation_steps"]),
    )
    assert batch < 8 and batch * accumulation == 16 and smaller.fits
