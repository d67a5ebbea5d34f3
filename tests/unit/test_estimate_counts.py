"""The estimate's parameter counts equal those of the real transformers/PEFT models built from the same config."""

from __future__ import annotations

import logging
import warnings

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from llm_finetuning.config.adapters import (
    DoraAdapter,
    FreezeAdapter,
    FullAdapter,
    IA3Adapter,
    LoraAdapter,
    PrefixAdapter,
    PromptAdapter,
    PTuningAdapter,
)
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.estimate.params import count
from llm_finetuning.estimate.shapes import shape_from_config
from llm_finetuning.models.adapters import apply_adapter, count_parameters

pytestmark = pytest.mark.unit

BASE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
FAMILIES = [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
    ("mistral", {}),
    ("mistral", {"tie_word_embeddings": True}),
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True}),
    ("qwen3", {"head_dim": 32}),
    ("gemma", {"head_dim": 16}),
    ("gemma2", {"head_dim": 16}),
    ("phi3", {}),
    ("phi", {}),
    ("phi", {"qk_layernorm": True}),
]


def hf_config(model_type: str, **extra):
    return AutoConfig.for_model(model_type, **{**BASE, **extra})


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("model_type", "extra"), FAMILIES, ids=[f"{t}-{sorted(e)}" for t, e in FAMILIES])
def test_parameter_count_equals_transformers(model_type, extra):
    config = hf_config(model_type, **extra)
    shape = shape_from_config(config.to_dict())
    assert shape.total_params == numel(AutoModelForCausalLM.from_config(config))
    reward = AutoModelForSequenceClassification.from_config(hf_config(model_type, num_labels=1, **extra))
    assert shape.as_reward_model().total_params == numel(reward)


def test_module_breakdown_by_hand():
    shape = shape_from_config({"model_type": "llama", **BASE})
    h, kv, i, v = 64, 2 * 16, 96, 300
    attention = h * h + 2 * h * kv + h * h
    mlp = 3 * h * i
    assert shape.layer_params == attention + mlp + 2 * h
    assert shape.embedding_params == v * h and shape.head_params == v * h  # untied
    assert shape.total_params == 2 * v * h + 3 * (attention + mlp + 2 * h) + h
    tied = shape_from_config({"model_type": "llama", **BASE, "tie_word_embeddings": True})
    assert tied.total_params == shape.total_params - v * h


ADAPTERS = [
    FullAdapter(),
    FreezeAdapter(),
    FreezeAdapter(layers=[0, -1], modules=["mlp"], extra_modules=["lm_head", "norm"]),
    FreezeAdapter(layers=1, modules=["self_attn"], extra_modules=["embed_tokens"]),
    LoraAdapter(r=4),
    DoraAdapter(r=4),
    LoraAdapter(r=8, target_modules=["q_proj", "v_proj"], bias="all"),
    LoraAdapter(r=4, modules_to_save=["lm_head"], bias="lora_only"),
    LoraAdapter(r=4, target_modules=["q_proj", "lm_head"]),
    IA3Adapter(),
    PrefixAdapter(),
    PrefixAdapter(projection=True),
    PromptAdapter(),
    PTuningAdapter(),
    PTuningAdapter(encoder="lstm", encoder_hidden_size=32),
]


@pytest.mark.parametrize(("model_type", "tied"), [("llama", False), ("llama", True), ("qwen2", True), ("phi", False)])
@pytest.mark.parametrize("adapter", ADAPTERS, ids=[f"{i}-{a.method}" for i, a in enumerate(ADAPTERS)])
def test_trainable_and_total_equal_peft(model_type, tied, adapter):
    config = hf_config(model_type, tie_word_embeddings=tied)
    shape = shape_from_config(config.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about tied weights and adapter names
        try:
            model = apply_adapter(AutoModelForCausalLM.from_config(config), adapter)
        except ConfigError:  # e.g. Phi's final norm is `final_layernorm`: the estimate refuses the name too
            with pytest.raises(ConfigError):
                count(shape, adapter)
            return
    counted = count(shape, adapter)
    assert (counted.trainable_count, counted.total) == tuple(count_parameters(model).values())


def test_lora_by_hand_and_reward_head_is_saved():
    shape = shape_from_config({"model_type": "llama", **BASE})
    r, h, kv, i = 4, 64, 32, 96
    per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    assert count(shape, LoraAdapter(r=r)).trainable_count == 3 * per_layer
    config = hf_config("llama", num_labels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(
            AutoModelForSequenceClassification.from_config(config), LoraAdapter(r=r), task_type="SEQ_CLS"
        )
    counted = count(shape.as_reward_model(), LoraAdapter(r=r))
    assert counted.trainable_count == 3 * per_layer + h  # PEFT trains a copy of the score head
    assert (counted.trainable_count, counted.total) == tuple(count_parameters(model).values())


# ------------------------------------------------------------------------------------------- errors
def test_unknown_lora_target_names_the_layers():
    shape = shape_from_config({"model_type": "phi3", **BASE})
    with pytest.raises(ConfigError, match=r"`q_proj`.*qkv_proj, o_proj, gate_up_proj, down_proj"):
        count(shape, LoraAdapter(target_modules=["q_proj"]))


def test_freeze_errors():
    shape = shape_from_config({"model_type": "llama", **BASE})
    with pytest.raises(ConfigError, match="adapter.layers: 5 exceeds the model's 3 layers"):
        count(shape, FreezeAdapter(layers=5))
    with pytest.raises(ConfigError, match="index -4 is out of range"):
        count(shape, FreezeAdapter(layers=[-4]))
    with pytest.raises(ConfigError, match="extra_modules: `wte`"):
        count(shape, FreezeAdapter(extra_modules=["wte"]))
    with pytest.raises(ConfigError, match="adapter.modules: no submodule"):
        count(shape, FreezeAdapter(modules=["attention"]))
    with pytest.raises(ConfigError, match="modules_to_save: `head`"):
        count(shape, LoraAdapter(modules_to_save=["head"]))


def test_ia3_without_known_defaults_asks_for_targets():
    shape = shape_from_config({"model_type": "phi3", **BASE})
    with pytest.raises(ConfigError, match="no default IA3 targets for `phi3`"):
        count(shape, IA3Adapter())


def test_config_json_errors_and_warnings(caplog):
    with pytest.raises(UserError, match=r"x.json: `hidden_size` is missing"):
        shape_from_config({"model_type": "llama", **{k: v for k, v in BASE.items() if k != "hidden_size"}}, "x.json")
    with pytest.raises(UserError, match="`num_local_experts` marks a mixture-of-experts model"):
        shape_from_config({"model_type": "mixtral", **BASE, "num_local_experts": 8})
    with pytest.raises(UserError, match="not a multiple of `num_key_value_heads`"):
        shape_from_config({"model_type": "llama", **BASE, "num_key_value_heads": 3})
    with caplog.at_level(logging.WARNING, logger="llm_finetuning"):
        shape = shape_from_config({"model_type": "olmo2", **BASE})
    assert "`olmo2` is not one of" in caplog.text and shape.total_params > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm_finetuning"):
        wrapped = shape_from_config({"model_type": "llava", "text_config": {"model_type": "llama", **BASE}})
    assert "text_config" in caplog.text
    assert wrapped.total_params == shape_from_config({"model_type": "llama", **BASE}).total_params
