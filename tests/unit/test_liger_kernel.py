"""`training.liger_kernel`: where it is refused, what it asks Liger for, and that the trained model runs the kernels.

liger-kernel needs Triton and a CUDA GPU, so a stand-in package records the call and patches the model's RMSNorm
modules the way Liger does (a `forward` bound on the instance), which lets a real CPU run show the patched modules
are the ones trained.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from llm_finetuning.config import Config
from llm_finetuning.errors import ConfigError
from llm_finetuning.models import kernels
from llm_finetuning.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.unit


class FakeLiger:
    """A stand-in `liger_kernel` package: records each call and counts the patched norms' forward passes."""

    def __init__(self, model_types: tuple[str, ...]) -> None:
        self.calls: list[dict] = []
        self.norm_calls = 0
        self.model_types = model_types

    def apply_to_instance(self, model, **kwargs) -> None:
        self.calls.append({"model": model, **kwargs})
        fake = self

        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                original = type(module).forward

                def forward(self, hidden_states, _original=original):
                    fake.norm_calls += 1
                    return _original(self, hidden_states)

                module.__dict__["forward"] = forward.__get__(module, type(module))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        names = ("liger_kernel", "liger_kernel.transformers", "liger_kernel.transformers.monkey_patch")
        modules = {}
        for name in names:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
            modules[name] = module
            monkeypatch.setitem(sys.modules, name, module)
        modules["liger_kernel.transformers"]._apply_liger_kernel_to_instance = self.apply_to_instance
        modules["liger_kernel.transformers.monkey_patch"].MODEL_TYPE_TO_APPLY_LIGER_FN = {
            name: object() for name in self.model_types
        }


def liger_config(tmp_path: Path, write_jsonl, rows, **training) -> Config:
    return Config.model_validate(
        tiny_config(write_jsonl(rows), tmp_path / "run", training={"liger_kernel": True, "max_steps": 2, **training})
    )


def test_refused_without_the_package(tmp_path, write_jsonl, qa_rows, monkeypatch):
    monkeypatch.setattr(kernels, "is_installed", lambda name: False)
    with pytest.raises(ConfigError, match=r"training\.liger_kernel: liger-kernel is not installed.*\[liger\]"):
        kernels.check_liger(liger_config(tmp_path, write_jsonl, qa_rows))


def test_refused_without_a_gpu(tmp_path, write_jsonl, qa_rows, monkeypatch):
    FakeLiger(("llama",)).install(monkeypatch)
    monkeypatch.setattr(kernels, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match=r"training\.liger_kernel: .*CUDA GPUs and no GPU is visible"):
        kernels.check_liger(liger_config(tmp_path, write_jsonl, qa_rows))


def test_refused_with_the_unsloth_backend(tmp_path, write_jsonl, qa_rows):
    raw = tiny_config(write_jsonl(qa_rows), tmp_path / "run", training={"liger_kernel": True})
    raw["model"] = {"name": "org/some-model", "backend": "unsloth"}
    with pytest.raises(ConfigError, match=r"training\.liger_kernel: `model\.backend: unsloth` .* own kernels"):
        kernels.check_liger(Config.model_validate(raw))


def test_off_by_default_and_then_nothing_is_imported(tmp_path, write_jsonl, qa_rows, monkeypatch):
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run"))
    assert config.training.liger_kernel is False
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # any import of it would now fail
    kernels.check_liger(config)
    kernels.apply_liger(torch.nn.Linear(2, 2), config)


def test_an_architecture_liger_does_not_patch_stops_the_run_before_training(
    tmp_path, write_jsonl, qa_rows, monkeypatch
):
    fake = FakeLiger(("qwen2", "mistral"))
    fake.install(monkeypatch)
    monkeypatch.setattr(kernels, "cuda_available", lambda: True)
    config = liger_config(tmp_path, write_jsonl, qa_rows)
    with pytest.raises(ConfigError, match=r"no kernels for `llama` models \(it patches mistral, qwen2\)"):
        train(config)
    assert fake.calls == []
    manifest = json.loads((Path(config.output_dir) / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert not list((Path(config.output_dir) / "checkpoints").glob("checkpoint-*"))


class NormCalls(TrainerCallback):
    """How many patched-norm forward passes each training step ran."""

    def __init__(self, fake: FakeLiger) -> None:
        self.fake, self.per_step = fake, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = self.fake.norm_calls

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.per_step.append(self.fake.norm_calls - self.start)


def test_the_trained_model_runs_the_patched_layers_and_the_loss_head_is_left_alone(
    tmp_path, write_jsonl, qa_rows, monkeypatch
):
    fake = FakeLiger(("llama",))
    fake.install(monkeypatch)
    monkeypatch.setattr(kernels, "cuda_available", lambda: True)
    counter = NormCalls(fake)
    result = train(liger_config(tmp_path, write_jsonl, qa_rows), callbacks=[counter])
    assert result.status == "completed"

    assert len(fake.calls) == 1
    call = fake.calls[0]
    patched = call.pop("model")
    assert call == kernels.LIGER_KERNELS
    assert call["fused_linear_cross_entropy"] is False and call["cross_entropy"] is False
    assert type(patched).__name__ == "LlamaForCausalLM"  # the base under the LoRA wrapper, not a copy
    assert any("lora_A" in name for name, _ in patched.named_parameters())
    # 2 layers x 2 norms + the final norm = 5 per forward: every step's forward went through the patched modules.
    assert len(counter.per_step) == 2 and all(n >= 5 for n in counter.per_step)
