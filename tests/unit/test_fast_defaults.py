"""The fast defaults: fused AdamW, LoRA without dropout, bf16 autocast where the CPU is native bf16 and the model
wide enough, and padding-free batches where the attention runs per example."""

from __future__ import annotations

import pytest

from llm_finetuning.config.schema import Config
from llm_finetuning.methods import common
from llm_finetuning.methods.sft import removes_padding
from llm_finetuning.models.fast_path import Capabilities, precision_choice
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.models.varlen_attention import NAME
from llm_finetuning.precision import CPU_BF16_MIN_HIDDEN

pytestmark = pytest.mark.unit


def config(**sections) -> Config:
    base = {"data": {"train": {"path": "x.jsonl", "format": "prompt_completion"}}}
    return Config.model_validate({**base, **sections})


def test_schema_defaults_are_the_fast_ones():
    c = config()
    assert c.training.optimizer == "adamw_torch_fused"
    assert c.data.padding_free is True and c.data.packing is False
    assert c.training.mixed_precision == "auto"
    assert c.adapter.method == "lora" and c.adapter.dropout == 0.0  # no mask and input copy per adapted layer


def test_auto_precision_on_cpu_is_bf16_only_where_native_and_wide_enough():
    native, plain = Capabilities(device="cpu", bf16=True), Capabilities(device="cpu", bf16=False)
    assert precision_choice("auto", native, 256).value == "bf16"
    assert precision_choice("auto", native, CPU_BF16_MIN_HIDDEN).value == "bf16"
    assert precision_choice("auto", native, 64).value == "no"  # the casts would cost more than the matmuls save
    assert precision_choice("auto", native, None).value == "bf16"  # a model of unknown width counts as a real one
    assert precision_choice("no", native, 4096).value == "no"
    assert precision_choice("auto", plain, 4096).value == "no"
    assert precision_choice("bf16", plain, 64).value == "bf16"  # asked for explicitly


def test_hidden_size_comes_from_the_tiny_shape_or_the_model_config(tmp_path):
    assert common.model_hidden_size(config(model={"name": "tiny", "tiny": {"hidden_size": 96, "num_heads": 4}})) == 96
    model = build_model(config(model={"tiny": {"hidden_size": 160, "num_heads": 4}}).model.tiny, build_tokenizer())
    model.save_pretrained(tmp_path / "m")
    assert common.model_hidden_size(config(model={"name": str(tmp_path / "m")})) == 160
    assert common.model_hidden_size(config(model={"name": str(tmp_path / "missing")})) is None


def tiny():
    return build_model(config(model={"tiny": {"hidden_size": 32, "num_heads": 4}}).model.tiny, build_tokenizer())


def test_padding_free_where_attention_runs_per_example():
    model = tiny()
    assert removes_padding(config(), model)
    assert model.config._attn_implementation == NAME  # switched to per-example attention


@pytest.mark.parametrize(
    "sections",
    [
        {"data": {"train": {"path": "x.jsonl", "format": "prompt_completion"}, "padding_free": False}},
        {"training": {"per_device_batch_size": 1}},  # nothing to pad
        {"adapter": {"method": "prompt", "num_virtual_tokens": 4}},  # virtual tokens once per row
        {"method": {"name": "pretrain"}},  # blocks of one length: no padding to remove
        {"model": {"quantization": "nf4"}, "adapter": {"method": "lora"}},  # bitsandbytes on CPU: left as it was
        {"model": {"attn_implementation": "sdpa"}},  # a mask over the whole row would cost more than padding
        {"model": {"attn_implementation": "eager"}},
    ],
)
def test_batches_stay_padded_otherwise(sections):
    model = tiny()
    assert not removes_padding(config(**sections), model)
    assert model.config._attn_implementation == "sdpa"
