"""Training variants end to end: packing, continual pretraining, QLoRA, bf16 autocast, 8-bit optimizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback

from llm_finetuning.config import Config
from llm_finetuning.errors import ConfigError
from llm_finetuning.train import train
from tests.conftest import shared, tiny_config

pytestmark = pytest.mark.e2e


class Watch(TrainerCallback):
    """What the trainer actually trained on, and which parameters moved."""

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.args = args
        self.rows = len(train_dataloader.dataset)
        self.first_batch = next(iter(train_dataloader))
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.changed = {n for n, p in model.named_parameters() if not torch.equal(self.before[n], p.detach())}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


def run(tmp_path: Path, data_path: Path, **sections) -> tuple[Config, Watch]:
    config = Config.model_validate(tiny_config(data_path, tmp_path / "run", **sections))
    watch = Watch()
    assert train(config, callbacks=[watch]).status == "completed"
    return config, watch


def test_packing_fills_rows_and_trains(tmp_path, write_jsonl, qa_rows):
    config, watch = run(tmp_path, write_jsonl(qa_rows), data={"packing": True, "max_length": 128})
    assert watch.args.padding_free or watch.args.packing
    assert watch.rows < len(qa_rows)  # several examples per row
    batch = watch.first_batch
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free
    starts = int((batch["position_ids"][0] == 0).sum())
    assert starts > 1  # positions restart at every example in the row
    assert watch.changed == watch.trainable


def test_continual_pretraining_cuts_text_into_blocks_with_loss_everywhere(tmp_path, write_jsonl):
    rows = [json.loads(line) for line in shared("gsm8k/train.jsonl").read_text().splitlines()[:30]]
    documents = write_jsonl([{"content": r["question"] + "\n" + r["answer"]} for r in rows], "docs.jsonl")
    config, watch = run(
        tmp_path,
        documents,
        method={"name": "pretrain"},
        data={"train": {"path": str(documents), "format": "text", "columns": {"text": "content"}}, "max_length": 64},
        adapter={"method": "full"},
    )
    stats = json.loads((tmp_path / "run" / "manifest.json").read_text())["data"]["stats"]["train"]
    # Byte-level tokens: every character is a token, each document ends with EOS.
    total = sum(len((r["question"] + "\n" + r["answer"]).encode()) + 1 for r in rows)
    assert stats["examples"] == total // 64 == watch.rows
    assert stats["dropped_tail_tokens"] == total % 64
    batch = watch.first_batch
    assert batch["input_ids"].shape[1] == 64
    assert torch.equal(batch["labels"], batch["input_ids"])  # loss on every token
    assert watch.changed == watch.trainable


def test_pretrain_rejects_chat_formats(tmp_path, write_jsonl, qa_rows):
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run", method={"name": "pretrain"}))
    with pytest.raises(ConfigError, match="gives messages records, but this method trains on text records"):
        train(config)


@pytest.mark.parametrize("quantization", ["nf4", "fp4", "int8"])
def test_qlora_trains_only_the_adapter_over_quantized_weights(tmp_path, write_jsonl, qa_rows, quantization):
    pytest.importorskip("bitsandbytes")
    config, watch = run(
        tmp_path,
        write_jsonl(qa_rows),
        model={"name": "tiny", "quantization": quantization, "tiny": {"hidden_size": 64, "num_heads": 2}},
        training={"max_steps": 3},
    )
    assert watch.changed == watch.trainable == {n for n in watch.before if "lora_" in n}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    final = tmp_path / "run" / "final"
    base = AutoModelForCausalLM.from_pretrained(
        json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    assert not getattr(base, "is_loaded_in_4bit", False)  # the adapter points at the unquantized base
    PeftModel.from_pretrained(base, final)


def test_bf16_autocast_and_8bit_optimizer_run_on_cpu(tmp_path, write_jsonl, qa_rows):
    pytest.importorskip("bitsandbytes")
    config, watch = run(
        tmp_path,
        write_jsonl(qa_rows),
        training={"mixed_precision": "bf16", "optimizer": "adamw_8bit", "max_steps": 3},
    )
    assert watch.args.bf16 and watch.args.optim == "adamw_8bit"
    assert watch.changed == watch.trainable


def test_fp16_autocast_needs_a_gpu(tmp_path, write_jsonl, qa_rows):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = Config.model_validate(
        tiny_config(write_jsonl(qa_rows), tmp_path / "run", training={"mixed_precision": "fp16"})
    )
    with pytest.raises(ConfigError, match="fp16 autocast needs a CUDA GPU"):
        train(config)
