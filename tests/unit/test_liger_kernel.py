"""`training.liger_kernel`: where it is refused, what it asks Liger for, that the trained model runs the kernels, and
that nothing else does.

liger-kernel needs Triton and a CUDA GPU, so a stand-in package does what Liger's patch functions do to a Llama
model: it rebinds names in transformers' modelling module (the rotary embedding function, the RMSNorm class), sets a
class attribute, and binds its own `forward` on the instance's norms. Like Triton, its norm kernel refuses tensors on
another device than the one the run trains on. A real CPU run then shows the patched modules are the ones trained,
that every forward before training ran before Liger's patch and on the training device, and that a model built
afterwards in the same process is untouched.
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
from transformers.models.llama import modeling_llama

from llm_finetuning.config import Config
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.errors import ConfigError
from llm_finetuning.models import kernels, packing, placement
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.unit

GPU = {"device": "cuda", "name": "fake GPU", "compute_capability": (9, 0), "bf16": True, "liger": True}


class FakeLiger:
    """A stand-in `liger_kernel` package: records each call, counts kernel calls, checks their device."""

    def __init__(self, model_types: tuple[str, ...], device: str = "cpu") -> None:
        self.calls: list[dict] = []
        self.norm_calls = 0
        self.rope_calls = 0
        self.model_types = model_types
        self.device = device

    def apply_to_instance(self, model, **kwargs) -> None:
        self.calls.append({"model": model, **kwargs})
        fake = self
        original_rope = modeling_llama.apply_rotary_pos_emb

        def rope(*args, **kw):
            fake.rope_calls += 1
            return original_rope(*args, **kw)

        # What Liger does at module and class level: every later Llama would see these.
        modeling_llama.apply_rotary_pos_emb = rope
        modeling_llama.LlamaRMSNorm = type("LigerRMSNorm", (torch.nn.Module,), {})
        modeling_llama.LlamaForCausalLM.liger_patched = True
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                original = type(module).forward

                def forward(self, hidden_states, _original=original):
                    if hidden_states.device.type != fake.device:  # Triton: "cannot be accessed from Triton"
                        raise ValueError("Pointer argument (at 0) cannot be accessed from Triton (cpu tensor?)")
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


def liger_config(tmp_path: Path, write_jsonl, rows, data=None, **training) -> Config:
    raw = tiny_config(write_jsonl(rows), tmp_path / "run", training={"liger_kernel": True, "max_steps": 2, **training})
    raw["model"]["dtype"] = "float32"
    raw["training"]["mixed_precision"] = "no"
    if data:
        raw["data"].update(data)
    return Config.model_validate(raw)


def test_refused_without_the_package(tmp_path, write_jsonl, qa_rows, fake_device):
    fake_device(**{**GPU, "liger": False})
    with pytest.raises(ConfigError, match=r"training\.liger_kernel: liger-kernel is not installed.*\[liger\]"):
        kernels.check_liger(liger_config(tmp_path, write_jsonl, qa_rows))


def test_refused_without_a_gpu(tmp_path, write_jsonl, qa_rows, fake_device):
    fake_device(device="cpu", liger=True)
    with pytest.raises(ConfigError, match=r"training\.liger_kernel: .*CUDA GPUs and no GPU is visible"):
        kernels.check_liger(liger_config(tmp_path, write_jsonl, qa_rows))


def test_refused_with_the_unsloth_backend(tmp_path, write_jsonl, qa_rows, fake_device):
    fake_device(**GPU)
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
    tmp_path, write_jsonl, qa_rows, monkeypatch, fake_device
):
    fake = FakeLiger(("qwen2", "mistral"))
    fake.install(monkeypatch)
    fake_device(**GPU)
    monkeypatch.setattr(placement, "training_device", lambda path: "cpu")  # the fake GPU trains on this CPU
    config = liger_config(tmp_path, write_jsonl, qa_rows)
    with pytest.raises(ConfigError, match=r"no kernels for `llama` models \(it patches mistral, qwen2\)"):
        train(config)
    assert fake.calls == []
    manifest = json.loads((Path(config.output_dir) / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert not list((Path(config.output_dir) / "checkpoints").glob("checkpoint-*"))


class NormCalls(TrainerCallback):
    """How many patched-norm and rotary-embedding calls each training step ran."""

    def __init__(self, fake: FakeLiger) -> None:
        self.fake, self.per_step, self.rope_per_step = fake, [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start, self.rope_start = self.fake.norm_calls, self.fake.rope_calls

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.per_step.append(self.fake.norm_calls - self.start)
        self.rope_per_step.append(self.fake.rope_calls - self.rope_start)


def test_only_the_trained_model_runs_the_patched_layers_after_every_check_on_its_device(
    tmp_path, write_jsonl, qa_rows, monkeypatch, fake_device
):
    fake = FakeLiger(("llama",), device="cpu")
    fake.install(monkeypatch)
    fake_device(**GPU)
    placed: list[str] = []

    def device_of(path):
        placed.append(path.device)
        return "cpu"  # the fake GPU's training device is this CPU: the model goes there and the kernels expect it

    monkeypatch.setattr(placement, "training_device", device_of)
    checks: list[tuple[str, int]] = []  # (device the model was on, Liger patches applied by then)
    real_check = packing.packed_attention_is_isolated

    def spy(model):
        checks.append((next(model.parameters()).device.type, len(fake.calls)))
        return real_check(model)

    monkeypatch.setattr(packing, "packed_attention_is_isolated", spy)
    original_rope, original_norm = modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm
    counter = NormCalls(fake)
    config = liger_config(tmp_path, write_jsonl, qa_rows, data={"packing": True})
    result = train(config, callbacks=[counter])
    assert result.status == "completed"

    assert placed == ["cuda"]  # placed once, on the plan's device, before anything ran the model
    assert checks and all(check == ("cpu", 0) for check in checks)  # every check before Liger, on that device
    assert len(fake.calls) == 1
    call = fake.calls[0]
    patched = call.pop("model")
    assert call == kernels.LIGER_KERNELS
    assert call["fused_linear_cross_entropy"] is False and call["cross_entropy"] is False
    assert type(patched).__name__ == "LlamaForCausalLM"  # the base under the LoRA wrapper, not a copy
    assert any("lora_A" in name for name, _ in patched.named_parameters())
    # 2 layers x 2 norms + the final norm = 5 per forward, and the rotary embedding once per layer: every step's
    # forward went through the patched kernels, the module-level one included.
    assert len(counter.per_step) == 2 and all(n >= 5 for n in counter.per_step)
    assert all(n >= 2 for n in counter.rope_per_step)

    # Transformers' module and classes are as they were: a Llama built afterwards runs none of Liger's kernels.
    assert modeling_llama.apply_rotary_pos_emb is original_rope
    assert modeling_llama.LlamaRMSNorm is original_norm
    assert not hasattr(modeling_llama.LlamaForCausalLM, "liger_patched")
    other = build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2), build_tokenizer())
    norms, ropes = fake.norm_calls, fake.rope_calls
    with torch.no_grad():
        other(input_ids=torch.tensor([[5, 6, 7]]))
        patched(input_ids=torch.tensor([[5, 6, 7]]))  # the trained one still runs them
    assert fake.rope_calls - ropes == 2 and fake.norm_calls - norms == 5


def test_a_model_is_placed_on_the_training_device_before_the_checks(tmp_path, write_jsonl, qa_rows, fake_device):
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run"))
    from llm_finetuning.models import fast_path

    gpu = fast_path.plan(config, fast_path.Capabilities(**GPU))
    moved: list[str] = []

    class Model:
        def to(self, device):
            moved.append(device)
            return self

    placement.place_model(Model(), config, gpu)
    assert moved == ["cuda:0"]
    placement.place_model(Model(), config, gpu, quantized=True)  # bitsandbytes placed it at load
    mapped = config.model_copy(update={"model": config.model.model_copy(update={"device_map": "auto"})})
    placement.place_model(Model(), mapped, gpu)
    placement.place_model(Model(), config, fast_path.plan(config, fast_path.Capabilities(device="cpu")))
    assert moved == ["cuda:0"]
