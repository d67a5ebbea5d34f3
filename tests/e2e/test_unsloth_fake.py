"""A whole SFT run with `model.backend: unsloth`, on the stand-in Unsloth of the unit tests (Unsloth needs a GPU).

It shows the training path hands the model and adapter to Unsloth with the config's settings, trains what Unsloth
attached and nothing else, and leaves a `final/` that transformers + PEFT load without Unsloth, giving the trained
model's logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_finetuning.config import Config
from llm_finetuning.models import tiny
from llm_finetuning.train import train
from tests.conftest import tiny_config
from tests.e2e.test_train_sft import PROBE, Snapshot
from tests.unit.test_unsloth_backend import LLAMA_LINEAR, FakeUnsloth

pytestmark = pytest.mark.e2e


def test_sft_on_unsloth_trains_the_adapter_and_saves_plain_peft(tmp_path, write_jsonl, qa_rows, monkeypatch):
    fake = FakeUnsloth().install(monkeypatch)
    # The checkpoint `model.name` points at: the same weights the stand-in builds, saved as a hub model would be.
    tokenizer = tiny.build_tokenizer()
    base = tmp_path / "base"
    tiny.build_model(FakeUnsloth.shape, tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    raw = tiny_config(write_jsonl(qa_rows), tmp_path / "run", training={"max_steps": 3, "seed": 5})
    raw["model"] = {"name": str(base), "backend": "unsloth"}
    snap = Snapshot()
    result = train(Config.model_validate(raw), callbacks=[snap])
    assert result.status == "completed"

    (load,) = fake.loads
    assert load["model_name"] == str(base) and load["max_seq_length"] == 128  # data.max_length
    (adapter,) = fake.adapters
    assert (adapter["r"], adapter["lora_alpha"], adapter["random_state"]) == (4, 8, 5)
    assert adapter["target_modules"] == LLAMA_LINEAR and adapter["use_gradient_checkpointing"] is False

    lora = {n for n in snap.before if "lora_" in n}
    changed = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    assert lora and snap.trainable == lora
    assert changed == lora  # every adapter weight moved, no base weight did

    final = result.run.final
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in final.iterdir()}
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=torch.tensor(PROBE)).logits
    torch.testing.assert_close(logits, snap.logits)
