"""Whole SFT runs on tiny models: what trains, what is saved, and what the run directory holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from llm_finetuning.config import Config, load_config
from llm_finetuning.errors import RunDirError
from llm_finetuning.train import train
from tests.conftest import REPO, shared, tiny_config

pytestmark = pytest.mark.e2e

PROBE = [[5, 17, 42, 99, 7, 3, 250, 8]]  # fixed token ids for comparing logits


class Snapshot(TrainerCallback):
    """Parameters when training starts and ends, and the logits of the trained model on PROBE."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=torch.tensor(PROBE)).logits
        model.train()

    def changed(self) -> set[str]:
        return {n for n in self.before if not torch.equal(self.before[n], self.after[n])}


def run(tmp_path: Path, write_jsonl, qa_rows, **sections) -> tuple[Config, Snapshot]:
    data = write_jsonl(qa_rows)
    config = Config.model_validate(tiny_config(data, tmp_path / "run", **sections))
    snapshot = Snapshot()
    result = train(config, callbacks=[snapshot])
    assert result.status == "completed"
    return config, snapshot


def test_lora_trains_every_adapter_parameter_and_no_base_parameter(tmp_path, write_jsonl, qa_rows):
    config, snap = run(tmp_path, write_jsonl, qa_rows)
    lora = {n for n in snap.before if "lora_" in n}
    assert lora and snap.trainable == lora
    assert snap.changed() == lora  # every adapter weight moved, no base weight did

    # final/ holds only the adapter and loads onto the saved base with plain transformers + PEFT.
    final = Path(config.output_dir) / "final"
    assert (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, final).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=torch.tensor(PROBE)).logits, snap.logits)
    assert AutoTokenizer.from_pretrained(final).pad_token != AutoTokenizer.from_pretrained(final).eos_token


def test_full_finetuning_trains_every_parameter_and_final_reproduces_logits(tmp_path, write_jsonl, qa_rows):
    config, snap = run(tmp_path, write_jsonl, qa_rows, adapter={"method": "full"})
    assert snap.trainable == set(snap.before)
    assert snap.changed() == set(snap.before)
    final = Path(config.output_dir) / "final"
    loaded = AutoModelForCausalLM.from_pretrained(final).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=torch.tensor(PROBE)).logits, snap.logits)


def test_run_directory_describes_the_run(tmp_path, write_jsonl, qa_rows, capfd, caplog):
    data = write_jsonl(qa_rows)
    config = Config.model_validate(
        tiny_config(
            data,
            tmp_path / "run",
            data={"eval_split": 0.25},
            training={"max_steps": 4, "logging_steps": 1, "save_steps": 2},
            eval={"every_steps": 2},
        )
    )
    with caplog.at_level("INFO", logger="llm_finetuning"):
        result = train(config)
    root = Path(config.output_dir)
    assert result.status == "completed"
    # The library logs and never prints: the trainer's log records go to the logger, not stdout.
    assert capfd.readouterr().out == ""
    logged = [r.getMessage() for r in caplog.records if r.name == "llm_finetuning.runs.progress"]
    assert [m.split(":")[0] for m in logged if ": loss " in m] == [f"step {i}/4" for i in range(1, 5)]
    assert {p.name for p in root.iterdir()} >= {
        "config.yaml",
        "manifest.json",
        "metrics.jsonl",
        "plots",
        "checkpoints",
        "final",
        "base",
    }
    # config.yaml is the resolved config and loads back to the same config.
    assert load_config(root / "config.yaml") == config

    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["seed"] == 0 and manifest["started_at"] and manifest["finished_at"]
    assert manifest["versions"]["transformers"] and manifest["versions"]["trl"]
    assert list(manifest["data"]["fingerprints"]) == [str(data)]
    assert len(manifest["data"]["fingerprints"][str(data)]) == 64
    assert manifest["data"]["stats"]["train"]["examples"] == 15
    assert manifest["data"]["stats"]["eval"]["examples"] == 5
    if (REPO / ".git").exists():
        assert len(manifest["git"]["commit"]) == 40

    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval_loss" in r][:2] == [2, 4]
    assert (root / "plots" / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (root / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert yaml.safe_load((root / "final" / "llmft_config.yaml").read_text())["adapter"]["r"] == 4


def test_existing_run_directory_is_not_overwritten(tmp_path, write_jsonl, qa_rows):
    data = write_jsonl(qa_rows)
    config = Config.model_validate(tiny_config(data, tmp_path / "run", training={"max_steps": 1}))
    train(config)
    marker = tmp_path / "run" / "final" / "adapter_model.safetensors"
    stamp = marker.stat().st_mtime_ns
    with pytest.raises(RunDirError, match="--overwrite"):
        train(config)
    assert marker.stat().st_mtime_ns == stamp
    assert train(config, overwrite=True).status == "completed"
    assert marker.stat().st_mtime_ns != stamp


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, write_jsonl, qa_rows):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("precious")
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run"))
    with pytest.raises(RunDirError, match="not a run directory"):
        train(config, overwrite=True)
    assert (tmp_path / "run" / "thesis.tex").read_text() == "precious"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_marks_the_run_interrupted(tmp_path, write_jsonl, write_yaml, qa_rows):
    data = write_jsonl(qa_rows * 50)
    path = write_yaml(tiny_config(data, tmp_path / "run", training={"max_steps": 100000, "logging_steps": 1}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "llm_finetuning.cli.main", "train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    assert (checkpoints[0] / "adapter_model.safetensors").is_file()
    assert (checkpoints[0] / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "final").exists()
    assert "--resume" in output


def test_sft_on_real_alpaca_file(tmp_path):
    path = shared("alpaca/alpaca_first100.torchtune_alpaca_tiny.json")
    config = Config.model_validate(
        tiny_config(
            path,
            tmp_path / "run",
            data={"train": {"path": str(path), "format": "alpaca"}, "max_length": 256, "eval_split": 0.1},
        )
    )
    result = train(config)
    assert result.status == "completed"
    stats = json.loads((tmp_path / "run" / "manifest.json").read_text())["data"]["stats"]
    assert stats["train"]["rows"] == 90 and stats["eval"]["rows"] == 10
    # Byte-level tokens make long answers exceed 256; the cut ones are counted, never silently.
    assert stats["train"]["truncated"] > 0
    assert stats["train"]["examples"] == 90 - stats["train"]["dropped_no_completion_after_truncation"]
    assert "eval_loss" in result.metrics


def test_sft_on_real_gsm8k_file_with_the_qwen2_tokenizer(tmp_path):
    path = shared("gsm8k/train.jsonl")
    config = Config.model_validate(
        tiny_config(
            path,
            tmp_path / "run",
            model={
                "name": "tiny",
                "tokenizer": str(shared("tokenizers/qwen2")),
                "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
            },
            data={
                "train": {
                    "path": str(path),
                    "format": "prompt_completion",
                    "max_samples": 40,
                    "columns": {"prompt": "question", "completion": "answer"},
                },
                "max_length": 512,
            },
            training={"max_steps": 3},
        )
    )
    result = train(config)
    assert result.status == "completed"
    stats = json.loads((tmp_path / "run" / "manifest.json").read_text())["data"]["stats"]["train"]
    assert stats["rows"] == 40 and stats["examples"] == 40 and stats["truncated"] == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_tensorboard_receives_the_metrics(tmp_path, write_jsonl, qa_rows):
    config = Config.model_validate(
        tiny_config(write_jsonl(qa_rows), tmp_path / "run", tracking={"report_to": ["tensorboard"]})
    )
    train(config)
    events = list((tmp_path / "run" / "logs" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # scoped to the run


def test_resume_continues_from_the_last_checkpoint(tmp_path, write_jsonl, qa_rows):
    data = write_jsonl(qa_rows)
    config = Config.model_validate(tiny_config(data, tmp_path / "run", training={"max_steps": 2, "save_steps": 2}))
    train(config)
    longer = Config.model_validate(tiny_config(data, tmp_path / "run", training={"max_steps": 4, "save_steps": 2}))
    result = train(longer, resume=True)
    assert result.status == "completed"
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [s for s in steps if s]
    assert losses[:2] == [1, 2] and 3 in losses and 4 in losses and losses.count(1) == 1  # no restart from 0
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4").is_dir()


@pytest.mark.slow
def test_quickstart_raises_the_held_out_metric(tmp_path):
    from llm_finetuning.quickstart import run_quickstart

    outcome = run_quickstart(output_dir=str(tmp_path / "quickstart"))
    assert outcome.result.status == "completed"
    assert outcome.before <= 5.0
    assert outcome.after - outcome.before >= 50.0


def test_gradient_checkpointing_does_not_change_the_result(tmp_path, write_jsonl, qa_rows):
    """Recomputing activations trades compute for memory; the trained weights must be the same."""
    data = write_jsonl(qa_rows)
    snapshots = []
    for name, checkpointing in (("plain", False), ("checkpointed", True)):
        config = Config.model_validate(
            tiny_config(data, tmp_path / name, training={"max_steps": 3, "gradient_checkpointing": checkpointing})
        )
        snapshot = Snapshot()
        train(config, callbacks=[snapshot])
        snapshots.append(snapshot)
    plain, checkpointed = snapshots
    assert plain.changed() and plain.changed() == checkpointed.changed()
    for name in plain.after:
        torch.testing.assert_close(plain.after[name], checkpointed.after[name], rtol=1e-5, atol=1e-6)


def test_skipped_rows_are_all_reported_in_the_run_directory(tmp_path, write_jsonl, qa_rows):
    bad = [{"prompt": f"q{i}"} for i in range(8)]  # no completion
    data = write_jsonl([*qa_rows, *bad, "{broken"])
    config = Config.model_validate(tiny_config(data, tmp_path / "run", data={"on_error": "skip"}))
    train(config)
    lines = (tmp_path / "run" / "dropped_rows.txt").read_text().splitlines()
    assert len(lines) == 9
    assert lines[0].startswith(f"train: {data}:21: field `completion` is missing")
    assert (
        lines[-1] == f"train: {data}:29: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    stats = json.loads((tmp_path / "run" / "manifest.json").read_text())["data"]["stats"]["train"]
    assert stats["skipped_bad_rows"] == 9 and len(stats["bad_rows"]) == 5 and stats["examples"] == len(qa_rows)


def test_data_clean_runs_before_the_split_and_reports(tmp_path, write_jsonl, qa_rows):
    rows = [*qa_rows[:10], qa_rows[0], {"prompt": "Mail me", "completion": "Write to ada@example.com today"}]
    eval_rows = [{"prompt": "Spell golf", "completion": "G O L F"}]  # also a training row: contamination
    data = write_jsonl(rows)
    evaluation = write_jsonl(eval_rows, "eval.jsonl")
    config = Config.model_validate(
        tiny_config(
            data,
            tmp_path / "run",
            data={
                "eval": {"path": str(evaluation), "format": "prompt_completion"},
                "clean": {"decontaminate": {"ngram": 3}, "near_dedup": {"enabled": False}},
            },
        )
    )
    train(config)
    report = json.loads((tmp_path / "run" / "clean_report.json").read_text())
    reasons = {event["where"].rsplit(":", 1)[1]: event["reason"] for event in report["events"]}
    assert reasons["11"] == "exact duplicate of #0"
    assert reasons["7"].startswith("shares")  # "Spell golf" is the eval item
    assert reasons["12"] == "redacted 1 email"
    assert report["input"] == 12 and report["output"] == 10
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["clean"]["removed"] == 2 and manifest["data"]["stats"]["train"]["examples"] == 10
