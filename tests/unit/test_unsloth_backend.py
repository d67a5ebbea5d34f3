"""`model.backend: unsloth`: what we ask Unsloth for, and everything the backend refuses.

Unsloth needs a CUDA GPU, so a stand-in `unsloth` package takes its place: `FastLanguageModel.from_pretrained`
builds a tiny random Llama and `get_peft_model` attaches a plain PEFT LoRA, each recording the arguments it got.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from llm_finetuning.check.config_checks import check_backend
from llm_finetuning.check.report import CheckReport
from llm_finetuning.config import Config, load_config
from llm_finetuning.config.schema import DoraAdapter, LoraAdapter, ModelConfig, TinyModelConfig
from llm_finetuning.errors import ConfigError
from llm_finetuning.models import tiny, unsloth_backend
from llm_finetuning.models.adapters import apply_adapter
from llm_finetuning.models.loading import load_model

pytestmark = pytest.mark.unit

LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


class FakeUnsloth:
    """A stand-in `unsloth` package whose `FastLanguageModel` records every call."""

    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2)

    def __init__(self) -> None:
        self.loads: list[dict[str, Any]] = []
        self.adapters: list[dict[str, Any]] = []
        fake = self

        class FastLanguageModel:
            @staticmethod
            def from_pretrained(**kwargs: Any) -> tuple[Any, Any]:
                fake.loads.append(kwargs)
                tokenizer = tiny.build_tokenizer()
                return tiny.build_model(fake.shape, tokenizer), tokenizer

            @staticmethod
            def get_peft_model(model: Any, **kwargs: Any) -> PeftModel:
                fake.adapters.append(kwargs)
                torch.manual_seed(kwargs["random_state"])  # as Unsloth does before it initialises the adapter
                config = LoraConfig(
                    r=kwargs["r"],
                    lora_alpha=kwargs["lora_alpha"],
                    lora_dropout=kwargs["lora_dropout"],
                    target_modules=kwargs["target_modules"],
                    bias=kwargs["bias"],
                    use_rslora=kwargs["use_rslora"],
                    modules_to_save=kwargs["modules_to_save"],
                    init_lora_weights=kwargs["init_lora_weights"],
                    use_dora=kwargs.get("use_dora", False),
                    task_type="CAUSAL_LM",
                )
                return get_peft_model(model, config)

        self.module = types.ModuleType("unsloth")
        self.module.__spec__ = importlib.machinery.ModuleSpec("unsloth", loader=None)
        self.module.__version__ = "0.0-stand-in"
        self.module.FastLanguageModel = FastLanguageModel

    def install(self, monkeypatch: pytest.MonkeyPatch, cuda: bool = True) -> FakeUnsloth:
        monkeypatch.setitem(sys.modules, "unsloth", self.module)
        monkeypatch.setattr(unsloth_backend, "cuda_available", lambda: cuda)
        return self


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeUnsloth:
    return FakeUnsloth().install(monkeypatch)


def unsloth_model(**model: Any) -> ModelConfig:
    return ModelConfig(**{"name": "org/llama", "backend": "unsloth", **model})


# ------------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, {"dtype": None, "load_in_4bit": False, "load_in_8bit": False}),
        ({"quantization": "nf4", "dtype": "bfloat16"}, {"dtype": torch.bfloat16, "load_in_4bit": True}),
        ({"quantization": "int8", "dtype": "float16"}, {"dtype": torch.float16, "load_in_8bit": True}),
    ],
)
def test_from_pretrained_gets_the_model_section(fake, settings, expected):
    config = unsloth_model(revision="v1", trust_remote_code=True, **settings)
    load_model(config, tiny.build_tokenizer(), max_seq_length=384)
    (call,) = fake.loads
    assert call["model_name"] == "org/llama" and call["max_seq_length"] == 384
    assert call["revision"] == "v1" and call["trust_remote_code"] is True
    assert call["use_exact_model_name"] is True and call["fix_tokenizer"] is False
    assert call["use_safetensors"] is True and "device_map" not in call
    for key, value in {"load_in_4bit": False, "load_in_8bit": False, **expected}.items():
        assert call[key] == value, key


def test_loaded_model_is_aligned_with_the_toolkit_tokenizer(fake):
    tokenizer = tiny.build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    model = load_model(unsloth_model(device_map="cuda:0", allow_unsafe_weights=True), tokenizer, max_seq_length=64)
    assert unsloth_backend.loaded_by_unsloth(model)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)  # grown to the added token
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.eos_token_id == tokenizer.eos_token_id
    assert fake.loads[0]["device_map"] == "cuda:0" and "use_safetensors" not in fake.loads[0]


def test_transformers_backend_never_reaches_unsloth(fake):
    model = load_model(ModelConfig(tiny=FakeUnsloth.shape), tiny.build_tokenizer())
    wrapped = apply_adapter(model, LoraAdapter(), seed=0)
    assert not unsloth_backend.loaded_by_unsloth(wrapped)
    assert fake.loads == [] and fake.adapters == []


# ------------------------------------------------------------------------------------------------- adapter
@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # PEFT: the tiny model ties lm_head
def test_get_peft_model_gets_the_adapter_section(fake):
    model = load_model(unsloth_model(), tiny.build_tokenizer(), max_seq_length=64)
    adapter = LoraAdapter(r=8, alpha=24, dropout=0.1, use_rslora=True, modules_to_save=["lm_head"], init="gaussian")
    wrapped = apply_adapter(model, adapter, gradient_checkpointing=True, seed=7)
    (call,) = fake.adapters
    assert call == {
        "r": 8,
        "lora_alpha": 24,
        "lora_dropout": 0.1,
        "target_modules": LLAMA_LINEAR,  # `all-linear`: every linear layer but the output head
        "bias": "none",
        "use_gradient_checkpointing": "unsloth",
        "random_state": 7,
        "use_rslora": True,
        "modules_to_save": ["lm_head"],
        "init_lora_weights": "gaussian",
    }
    assert isinstance(wrapped, PeftModel)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_dora_named_targets_and_no_checkpointing(fake):
    model = load_model(unsloth_model(), tiny.build_tokenizer(), max_seq_length=64)
    apply_adapter(model, DoraAdapter(r=4, target_modules=["q_proj", "v_proj"]), seed=3)
    (call,) = fake.adapters
    assert call["target_modules"] == ["q_proj", "v_proj"] and call["use_dora"] is True
    assert call["use_gradient_checkpointing"] is False and call["modules_to_save"] is None
    assert call["init_lora_weights"] is True and call["random_state"] == 3


# ------------------------------------------------------------------------------------------- config refusals
BASE = {"model": {"name": "org/llama", "backend": "unsloth"}, "data": {"train": {"path": "x.jsonl"}}}

REFUSED = [
    ({"model": {"name": "tiny"}}, "not the `tiny` model"),
    *[({"adapter": {"method": m}}, f"not `adapter.method: {m}`") for m in ("full", "freeze", "ia3", "prefix")],
    *[({"adapter": {"method": m}}, f"not `adapter.method: {m}`") for m in ("prompt", "p_tuning")],
    ({"adapter": {"method": "lora", "init": "pissa"}}, "not `adapter.init: pissa`"),
    ({"adapter": {"method": "dora", "init": "olora"}}, "not `adapter.init: olora`"),
    ({"adapter": {"target_modules": ["q_proj", "lm_head"]}}, "List them in `adapter.modules_to_save`"),
    ({"adapter": {"modules_to_save": ["lm_head", "norm"]}}, "not `adapter.modules_to_save` norm"),
    *[({"method": {"name": m}}, f"not `{m}`: this integration") for m in ("dpo", "orpo", "kto")],
    (
        {"method": {"name": "grpo", "rewards": [{"name": "reasoning_tags"}]}, "training": {"per_device_batch_size": 8}},
        "not `grpo`",
    ),
    ({"method": {"name": "ppo", "reward_model": "org/rm"}}, "not `ppo`: the PPO trainer is the toolkit's own"),
    ({"method": {"name": "reward"}}, "not `reward`: a reward model needs a sequence-classification head"),
    ({"model": {"quantization": "fp4"}}, "nf4 only"),
    ({"model": {"quantization": "nf4", "double_quantization": False}}, "always double-quantizes"),
    ({"model": {"attn_implementation": "sdpa"}}, "would ignore `model.attn_implementation: sdpa`"),
]


def config_with(sections: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) for key, value in BASE.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value} if key == "model" else value
    return merged


@pytest.mark.parametrize(("sections", "message"), REFUSED)
def test_config_refusals_name_the_backend_and_the_fix(write_yaml, sections, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write_yaml(config_with(sections)))
    text = str(caught.value)
    assert "model.backend: `model.backend: unsloth`" in text  # located at the key, then what it cannot do
    assert message in text
    assert "model.backend: transformers" in text


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"model": {"quantization": "nf4"}},
        {"model": {"quantization": "int8", "dtype": "bfloat16"}},
        {"adapter": {"method": "dora", "r": 8, "init": "gaussian"}},
        {"adapter": {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head", "embed_tokens"]}},
        {"method": {"name": "pretrain"}, "data": {"train": {"path": "x.jsonl", "format": "text"}}},
    ],
)
def test_supported_configs_validate(sections):
    config = Config.model_validate(config_with(sections))
    assert config.model.backend == "unsloth"


def test_transformers_backend_is_unaffected():
    config = Config.model_validate({"model": {"name": "tiny"}, "adapter": "ia3", "data": BASE["data"]})
    assert config.model.backend == "transformers"


# --------------------------------------------------------------------------------------- machine refusals
def test_refused_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", None)  # a None entry makes the package unimportable
    monkeypatch.setattr(unsloth_backend, "cuda_available", lambda: True)
    with pytest.raises(ConfigError, match=r"model\.backend: unsloth needs the Unsloth package.*\[unsloth\]"):
        load_model(unsloth_model(), tiny.build_tokenizer(), max_seq_length=64)


def test_refused_without_a_gpu_before_anything_loads(monkeypatch):
    stand_in = FakeUnsloth().install(monkeypatch, cuda=False)
    with pytest.raises(ConfigError, match=r"model\.backend: unsloth .*need a CUDA GPU.*no GPU is visible"):
        load_model(unsloth_model(), tiny.build_tokenizer(), max_seq_length=64)
    assert stand_in.loads == []


def test_refused_in_a_multi_process_run(fake, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"model\.backend: unsloth trains in one process here \(2 were started\)"):
        unsloth_backend.check_unsloth(Config.model_validate(BASE))
    assert fake.loads == []


def test_check_reports_the_machine_refusals(monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", None)
    monkeypatch.setattr(unsloth_backend, "cuda_available", lambda: False)
    report = CheckReport()
    check_backend(Config.model_validate(BASE), report)
    assert [f.where for f in report.findings] == ["model.backend", "model.backend"]
    assert all(f.level == "error" for f in report.findings) and not report.ok
    assert "pip install 'llm-finetuning[unsloth]'" in report.findings[0].message
    assert "CUDA GPU" in report.findings[1].message


def test_check_passes_where_unsloth_can_run(fake):
    report = CheckReport()
    check_backend(Config.model_validate(BASE), report)
    check_backend(Config.model_validate({"data": BASE["data"]}), report)  # transformers: nothing to check
    assert report.findings == []


# ------------------------------------------------------------------------------------------- import order
def test_late_import_warns_what_it_costs(tmp_path: Path, monkeypatch, caplog):
    import trl  # noqa: F401  (imported, as it is by the training code before any model loads)

    package = tmp_path / "unsloth"
    package.mkdir()
    (package / "__init__.py").write_text('__version__ = "0.0-on-path"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(unsloth_backend, "cuda_available", lambda: True)
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    try:
        with caplog.at_level(logging.WARNING, logger=unsloth_backend.__name__):
            module = unsloth_backend.import_unsloth()
            unsloth_backend.import_unsloth()  # once imported, nothing more to say
    finally:
        sys.modules.pop("unsloth", None)
    assert module.__version__ == "0.0-on-path"
    (record,) = caplog.records
    assert "imported after trl, transformers, peft" in record.message
    assert "without Unsloth's trainer-side optimisations" in record.message and "import unsloth" in record.message
