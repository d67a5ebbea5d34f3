"""`llmft merge-models` takes LoRA runs as models: the adapter is applied to its base first, tensor by tensor.

The streamed application is checked against PEFT's own merge (`llmft merge`, `merge_and_unload`); a DoRA run,
which cannot be streamed, goes through PEFT and gives the same model as `llmft merge`.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llm_finetuning.config import Config
from llm_finetuning.export.lora_merge import merge_run
from llm_finetuning.export.merge_config import load_merge_config
from llm_finetuning.export.merge_models import merge_models
from llm_finetuning.export.model_sources import open_model
from llm_finetuning.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.e2e
PROBE = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 8]])


def _train(root: Path, method: str) -> Path:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    data = root / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Spell {w}", "completion": " ".join(w.upper())}) + "\n" for w in words)
    )
    adapter = {"method": method, "r": 4, "alpha": 8, "dropout": 0.0}
    config = Config.model_validate(tiny_config(data, root / "run", adapter=adapter))
    assert train(config).status == "completed"
    return root / "run"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("lora"), "lora")


def adapter_logits(run: Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base"), run / "final").eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def model_logits(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path).eval()(input_ids=PROBE).logits


def test_streamed_lora_equals_peft_merge(lora_run: Path) -> None:
    peft_merged = load_file(merge_run(lora_run).path / "model.safetensors")
    base = load_file(lora_run / "base" / "model.safetensors")
    with ExitStack() as stack:
        source = open_model(str(lora_run), stack)
        assert len(source.lora) == 14  # q, k, v, o, gate, up, down of both layers: streamed, not via PEFT
        assert source.tensors.keys() == peft_merged.keys()
        for name in source.tensors:
            torch.testing.assert_close(source.read(name), peft_merged[name], rtol=0, atol=1e-6)
    changed = [n for n in base if not torch.equal(base[n], peft_merged[n])]
    assert len(changed) == 14


def test_a_run_directory_is_a_model(lora_run: Path, write_yaml, tmp_path: Path) -> None:
    """Task arithmetic of the run alone over its base is the fine-tuned model; `BASE+ADAPTER` reads the same."""
    config = write_yaml(
        f"merge_method: task_arithmetic\nbase_model: {lora_run / 'base'}\nmodels:\n"
        f"  - model: {lora_run}\n    parameters: {{weight: 1.0}}\ndtype: float32\n"
    )
    merged = merge_models(load_merge_config(config), output_dir=tmp_path / "ta")
    torch.testing.assert_close(model_logits(merged), adapter_logits(lora_run), rtol=1e-4, atol=1e-5)
    linear = write_yaml(
        f"merge_method: linear\nmodels:\n  - model: {lora_run}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {lora_run / 'base'}+{lora_run / 'final'}\n    parameters: {{weight: 1.0}}\n",
        name="linear.yml",
    )
    same = merge_models(load_merge_config(linear), output_dir=tmp_path / "linear")
    torch.testing.assert_close(model_logits(same), model_logits(merged), rtol=0, atol=1e-6)


def test_a_dora_run_is_merged_by_peft_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = _train(tmp_path, "dora")
    caplog.set_level("INFO")
    with ExitStack() as stack:
        source = open_model(str(run), stack)
        assert not source.lora and "use_dora" in caplog.text
        expected = load_file(merge_run(run).path / "model.safetensors")
        for name in source.tensors:
            torch.testing.assert_close(source.read(name), expected[name], rtol=0, atol=1e-6)
