"""The benchmark harness: token counting without padding, step statistics and ratios, on fake batches and clocks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402

pytestmark = pytest.mark.unit
PAD = 0


def test_padded_batch_counts_its_attention_mask():
    inputs = {
        "input_ids": torch.tensor([[5, 6, 7, 8], [5, 6, PAD, PAD], [9, PAD, PAD, PAD]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]),
    }
    assert harness.sequence_lengths(inputs) == [4, 2, 1]
    assert harness.count_tokens(inputs, PAD) == (7, 12, 16 + 4 + 1)


def test_padding_free_row_splits_where_positions_restart():
    inputs = {"input_ids": torch.arange(1, 10)[None], "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])}
    assert harness.sequence_lengths(inputs) == [3, 2, 4]
    assert harness.count_tokens(inputs) == (9, 9, 9 + 4 + 16)


def test_rows_without_mask_or_positions_count_non_pad_tokens():
    inputs = {"input_ids": torch.tensor([[3, 4, PAD], [3, PAD, PAD]])}
    assert harness.count_tokens(inputs, PAD) == (3, 6, 4 + 1)
    assert harness.count_tokens(inputs, None) == (6, 6, 18)  # no pad id known: every position is a token


def test_summary_takes_medians_of_measured_steps():
    steps = [
        {"seconds": 2.0, "cpu_seconds": 1.0, "tokens": 100, "slots": 200, "squares": 0},
        {"seconds": 1.0, "cpu_seconds": 1.0, "tokens": 300, "slots": 400, "squares": 0},
        {"seconds": 4.0, "cpu_seconds": 2.0, "tokens": 200, "slots": 400, "squares": 0},
    ]
    summary = harness.summarize(steps)
    assert summary["steps"] == 3
    assert summary["median_step_s"] == 2.0
    assert summary["tokens_per_s"] == 50.0  # rates 50, 300, 50
    assert summary["cpu_tokens_per_s"] == 100.0  # rates 100, 300, 100
    assert summary["padding_fraction"] == pytest.approx(1 - 600 / 1000)
    assert summary["tokens_per_step"] == 200.0
    with pytest.raises(ValueError, match="no measured steps"):
        harness.summarize([])


def test_loss_tokens_are_the_labelled_next_tokens():
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    assert harness.loss_tokens({"labels": labels}) == 3
    assert harness.loss_tokens({"input_ids": labels}) is None


def test_mfu_is_model_flops_per_second_over_the_peak():
    steps = [{"seconds": 2.0, "tokens": 10, "slots": 10, "squares": 25} for _ in range(5)]

    def flops(step):
        return harness.train_flops(step["tokens"], step["squares"], frozen=100, trained=20, layers=2, hidden=8)

    # 4*100*10 + 6*20*10 = 5200 matmul flops; attention 6*2*8*25 = 2400
    assert flops(steps[0]) == 5200 + 2400
    summary = harness.summarize(steps, flops, peak_flops=1000.0, useful_flops_per_step=lambda step: 1000.0)
    assert summary["model_flops_per_s"] == 3800.0
    assert summary["mfu"] == pytest.approx(3.8)
    assert summary["useful_mfu"] == pytest.approx(0.5)


class Echo(nn.Module):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None):
        return input_ids


class FakeClock:
    def __init__(self, times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


def test_meter_times_steps_counts_training_forwards_and_drops_warmup():
    model = Echo()
    wall = FakeClock([0.0, 3.0, 4.0, 6.0])
    cpu = FakeClock([0.0, 2.0, 3.0, 4.5])
    meter = harness.StepMeter(warmup=1, pad_token_id=PAD, clock=wall, cpu_clock=cpu)
    meter.on_train_begin(None, None, None, model=model)
    padded = {"input_ids": torch.tensor([[1, 2, PAD]]), "attention_mask": torch.tensor([[1, 1, 0]])}
    padded["labels"] = torch.tensor([[-100, 2, -100]])
    for step in range(3):
        model(**padded)
        model(**padded)  # gradient accumulation: two forwards in one optimizer step
        if step == 1:
            model.eval()
            model(**padded)  # evaluation forwards do not count
            model.train()
            with torch.no_grad():
                model(**padded)  # nor do forwards without gradients (generation, reference log-probs)
        meter.on_step_end(None, None, None)
    meter.on_train_end(None, None, None)
    model(**padded)  # after training the hook is gone
    assert [s["tokens"] for s in meter.steps] == [4, 4, 4]
    assert [s["slots"] for s in meter.steps] == [6, 6, 6]
    assert [s["loss_tokens"] for s in meter.steps] == [2, 2, 2]
    measured = meter.measured()
    assert [s["seconds"] for s in measured] == [1.0, 2.0]
    assert [s["cpu_seconds"] for s in measured] == [1.0, 1.5]


def result(name, rate, baseline="base", group="g"):
    return harness.Result(
        name,
        group,
        baseline,
        {},
        figures={
            "tokens_per_s": rate,
            "cpu_tokens_per_s": rate / 2,
            "median_step_s": 1.0,
            "tokens_per_step": rate,
            "padding_fraction": 0.25,
            "mfu": 0.5,
            "useful_mfu": 0.4,
        },
        memory={"peak_rss": 3 * 2**20, "peak_rss_delta": 2**20, "cuda_peak": None},
    )


def test_ratios_are_to_the_baseline_of_the_same_group(tmp_path):
    results = [result("base", 100.0), result("fast", 150.0), result("other", 10.0, "other", group="h")]
    skipped = harness.Result("gpu", "g", "base", {}, skipped="needs a CUDA GPU")
    results.append(skipped)
    assert results[0].ratio(results) == 1.0
    assert results[1].ratio(results) == 1.5
    assert results[1].ratio(results, "cpu_tokens_per_s") == 1.5
    assert results[2].ratio(results) == 1.0
    assert skipped.ratio(results) is None
    table = harness.markdown_table(results, cpu_time=True)
    lines = table.splitlines()
    assert lines[2].startswith("| g | base | 100 | = | 50 | = |")
    assert lines[3].startswith("| g | fast | 150 | 1.50 | 75 | 1.50 |")
    assert "| 25% | 50.0% | 40.0% | 1 |" in lines[3]  # padding, MFU, useful MFU, RSS above the start in MiB
    assert "skipped: needs a CUDA GPU" in lines[5]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    path = tmp_path / "out.json"
    harness.write_json(path, {"cpu": "x"}, results, {"suite": "s"})
    payload = json.loads(path.read_text())
    assert payload["suite"] == "s" and payload["machine"] == {"cpu": "x"}
    assert [r["ratio"] for r in payload["results"]] == [1.0, 1.5, 1.0, None]
    _, again = harness.read_json(path)
    assert harness.markdown_table(again, cpu_time=True) == table  # the tables render again from the file
