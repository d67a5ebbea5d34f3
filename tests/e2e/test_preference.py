"""Reward models, DPO, ORPO and KTO end to end on tiny models and the real preference files."""

from __future__ import annotations

import gc
import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, TrainerCallback

from llm_finetuning.config import Config
from llm_finetuning.scoring import load_reward_model, score
from llm_finetuning.train import train
from tests.conftest import shared

pytestmark = pytest.mark.e2e

TINY = {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}}
LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


class Census(TrainerCallback):
    """Which parameters moved, and how many full models existed while training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        gc.collect()
        self.models = sum(
            isinstance(o, PreTrainedModel) and not hasattr(o, "base_model_prefix_for_peft")
            for o in gc.get_objects()
            if type(o).__name__.endswith("ForCausalLM")
        )

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.changed = {n for n, p in model.named_parameters() if not torch.equal(self.before[n], p.detach())}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


def config(tmp_path, method, source, adapter=LORA, **sections) -> Config:
    return Config.model_validate(
        {
            "model": sections.pop("model", TINY),
            "adapter": adapter,
            "method": method,
            "data": {"train": source, "max_length": sections.pop("max_length", 512), **sections.pop("data", {})},
            "training": {
                "max_steps": 3,
                "per_device_batch_size": 2,
                "logging_steps": 1,
                "learning_rate": 1e-3,
                **sections.pop("training", {}),
            },
            "output_dir": str(tmp_path / "run"),
        }
    )


DPO_DEMO = {"path": "", "format": "preference", "columns": {"prompt": "conversations"}, "max_samples": 12}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_with_lora_uses_the_disabled_adapter_as_reference(tmp_path, loss_type):
    source = {**DPO_DEMO, "path": str(shared("llamafactory_demo/dpo_en_demo.json"))}
    census = Census()
    result = train(config(tmp_path, {"name": "dpo", "loss_type": loss_type}, source), callbacks=[census])
    assert result.status == "completed"
    assert census.changed == census.trainable == {n for n in census.before if "lora_" in n}
    assert census.models == 1  # no reference copy in memory
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/margins" in r for r in records if "loss" in r)


def test_dpo_full_weights_keeps_a_frozen_reference(tmp_path):
    source = {**DPO_DEMO, "path": str(shared("llamafactory_demo/dpo_en_demo.json"))}
    census = Census()
    train(config(tmp_path, {"name": "dpo"}, source, adapter={"method": "full"}), callbacks=[census])
    assert census.models == 2 and census.changed == census.trainable


def test_qlora_dpo_on_hh_rlhf(tmp_path):
    pytest.importorskip("bitsandbytes")
    source = {"path": str(shared("hh_rlhf/helpful-base/test.jsonl.gz")), "format": "preference", "max_samples": 12}
    model = {**TINY, "quantization": "nf4", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2}}
    census = Census()
    result = train(config(tmp_path, {"name": "dpo"}, source, model=model, max_length=1024), callbacks=[census])
    assert result.status == "completed" and census.changed == census.trainable


def test_orpo_on_hh_rlhf_counts_what_does_not_fit(tmp_path):
    source = {"path": str(shared("hh_rlhf/helpful-base/test.jsonl.gz")), "format": "preference", "max_samples": 30}
    result = train(config(tmp_path, {"name": "orpo"}, source, max_length=400, data={"on_error": "skip"}))
    assert result.status == "completed"
    stats = json.loads((tmp_path / "run" / "manifest.json").read_text())["data"]["stats"]["train"]
    assert stats["truncated"] > 0  # byte-level tokens: long transcripts exceed 400
    assert (
        stats["examples"] == stats["rows"] - stats["skipped_bad_rows"] - stats["dropped_no_completion_after_truncation"]
    )
    losses = [json.loads(line).get("loss") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(v, float) and v > 0 for v in losses if v is not None)  # no NaN from empty completions


def test_kto_on_the_demo_file(tmp_path):
    source = {"path": str(shared("llamafactory_demo/kto_en_demo.json")), "format": "unpaired", "max_samples": 16}
    method = {"name": "kto", "desirable_weight": 1.0, "undesirable_weight": 1.5}
    census = Census()
    assert train(config(tmp_path, method, source), callbacks=[census]).status == "completed"
    assert census.models == 1 and census.changed == census.trainable


def test_reward_model_learns_a_preference_and_scores_pairs(tmp_path, write_jsonl):
    rng = random.Random(0)
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "ocean", "piano"]
    rows = []
    for _ in range(64):
        prompt = " ".join(rng.choice(words) for _ in range(3))
        rows.append({"prompt": prompt, "chosen": "yes " * 3, "rejected": "no " * 3})
    data = write_jsonl(rows, "pairs.jsonl")
    result = train(
        config(
            tmp_path,
            {"name": "reward"},
            {"path": str(data), "format": "preference"},
            adapter={"method": "full"},
            data={"eval_split": 0.25},
            training={"max_steps": 40, "per_device_batch_size": 8, "learning_rate": 3e-3},
        )
    )
    assert result.metrics["eval_accuracy"] == 1.0
    final = tmp_path / "run" / "final"
    assert AutoModelForSequenceClassification.from_pretrained(final).config.num_labels == 1
    model, tokenizer = load_reward_model(tmp_path / "run")
    good, bad = score(model, tokenizer, ["apple river stone"] * 2, ["yes yes yes ", "no no no "])
    assert good > bad


def test_reward_model_with_lora_saves_an_adapter_with_its_head(tmp_path):
    source = {
        "path": str(shared("stack_exchange_paired/stack_exchange_paired_tiny.json")),
        "format": "preference",
        "columns": {"prompt": "question", "chosen": "response_j", "rejected": "response_k"},
    }
    train(config(tmp_path, {"name": "reward"}, source, max_length=2048))
    model, tokenizer = load_reward_model(tmp_path / "run")
    (value,) = score(model, tokenizer, ["How do I sort?"], ["Use sorted()."])
    assert isinstance(value, float)
    saved = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS"


@pytest.mark.parametrize("name", ["dpo", "kto"])
def test_reference_log_probs_are_computed_once_and_reused(tmp_path, monkeypatch, name):
    from trl import DPOTrainer, KTOTrainer

    trainer_class = {"dpo": DPOTrainer, "kto": KTOTrainer}[name]
    calls = []
    original = trainer_class.compute_ref_log_probs
    monkeypatch.setattr(
        trainer_class, "compute_ref_log_probs", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    monkeypatch.setenv("LLMFT_CACHE_DIR", str(tmp_path / "cache"))
    if name == "dpo":
        source = {**DPO_DEMO, "path": str(shared("llamafactory_demo/dpo_en_demo.json"))}
    else:
        source = {"path": str(shared("llamafactory_demo/kto_en_demo.json")), "format": "unpaired", "max_samples": 16}
    method = {"name": name, "precompute_ref_log_probs": True}
    losses = []
    for attempt in ("first", "second"):
        calls.clear()
        run_config = config(tmp_path / attempt, method, source)
        losses.append(train(run_config).metrics["train_loss"])
        if attempt == "first":
            assert calls  # the first run computes them
        else:
            assert calls == []  # the second run reads them from the cache: no reference forward pass
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
