"""DP-SGD SFT (`training.privacy`) on a tiny model: the epsilon reported is Opacus's accountant's for the run's
sampling rate, steps and noise; training still lowers the loss, with LoRA and with full weights; the loss gives
each example a gradient of its own; Poisson batches (empty ones too) are what it trains on; a resumed run spends
what an uninterrupted one spends; settings DP-SGD cannot do are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from transformers import TrainerCallback

from llm_finetuning.config import Config
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.methods.private import EMPTY, _EmptyAware, per_example_loss, plan
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.train import train
from tests.conftest import tiny_config

opacus = pytest.importorskip("opacus")
pytestmark = pytest.mark.e2e

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


@pytest.fixture
def data(write_jsonl):
    return write_jsonl([{"prompt": f"Spell {w}", "completion": " ".join(w.upper())} for w in WORDS * 6])


def private_config(data, out, **training):
    settings = {"max_steps": 20, "per_device_batch_size": 8, "learning_rate": 3e-2, "privacy": {"epsilon": 50}}
    return Config.model_validate(tiny_config(data, out, training={**settings, **training}))


def losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_epsilon_is_the_accountants_and_training_still_learns(tmp_path, data):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from safetensors.torch import load_file

    result = train(private_config(data, tmp_path / "run"))
    assert result.status == "completed"
    metrics = result.metrics
    rate, delta = 8 / 60, 1 / 600  # batch / examples; the default delta is 1 / (10 N)
    assert metrics["privacy/sample_rate"] == pytest.approx(rate) and metrics["privacy/delta"] == pytest.approx(delta)
    noise = get_noise_multiplier(target_epsilon=50, target_delta=delta, sample_rate=rate, steps=20, accountant="rdp")
    assert metrics["privacy/noise_multiplier"] == pytest.approx(noise)
    accountant = RDPAccountant()
    accountant.history = [(noise, rate, 20)]
    assert metrics["privacy/epsilon"] == pytest.approx(accountant.get_epsilon(delta=delta))
    assert metrics["privacy/epsilon"] <= 50 + 1e-6
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["final_metrics"]["privacy/epsilon"] == metrics["privacy/epsilon"]
    seen = losses(tmp_path / "run")
    assert sum(seen[-5:]) / 5 < sum(seen[:3]) / 3  # noisy, but it learns
    # LoRA trained; the base model's weights did not move.
    adapter = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    assert any(("lora_B" in k) and v.abs().sum() > 0 for k, v in adapter.items())


def test_full_fine_tuning_trains_privately_too(tmp_path, data):
    config = tiny_config(
        data,
        tmp_path / "run",
        training={"max_steps": 6, "per_device_batch_size": 8, "learning_rate": 1e-3, "privacy": {"epsilon": 8}},
    )
    config["adapter"] = {"method": "full"}
    result = train(Config.model_validate(config))
    assert result.status == "completed" and 0 < result.metrics["privacy/epsilon"] <= 8 + 1e-6
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_the_loss_gives_each_example_its_own_gradient():
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2), tokenizer)
    rows = [torch.tensor([5, 6, 7, 8, 9, 10]), torch.tensor([11, 12, 13])]
    labels = [torch.tensor([-100, -100, 7, 8, 9, 10]), torch.tensor([-100, 12, 13])]
    pad = tokenizer.pad_token_id
    batch = {
        "input_ids": torch.stack([rows[0], torch.cat([rows[1], torch.full((3,), pad)])]),
        "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]]),
        "labels": torch.stack([labels[0], torch.cat([labels[1], torch.full((3,), -100)])]),
    }
    alone = [
        per_example_loss(model, {"input_ids": r[None], "attention_mask": torch.ones(1, len(r)), "labels": y[None]})
        for r, y in zip(rows, labels, strict=True)
    ]
    # The batch loss is the plain mean of the examples' own losses: lengths do not weight one by the other.
    assert per_example_loss(model, batch).item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, abs=1e-5)


def test_poisson_batches_vary_and_an_empty_one_still_trains(tmp_path, data):
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    assert _EmptyAware(lambda rows: {"n": len(rows)})([]) == {EMPTY: torch.ones(1)}
    # batch 1 of 60: an empty batch comes about a third of the time.
    sampler = UniformWithReplacementSampler(
        num_samples=60, sample_rate=1 / 60, generator=torch.Generator().manual_seed(0)
    )
    sizes = [len(b) for b in sampler]
    assert 0 in sizes and max(sizes) > 1
    result = train(private_config(data, tmp_path / "run", per_device_batch_size=1, max_steps=12, seed=0))
    assert result.status == "completed" and result.metrics["privacy/steps"] == 12


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = control.should_training_stop = True
        return control


def test_a_resumed_run_spends_what_an_uninterrupted_one_spends(tmp_path, data):
    whole = train(private_config(data, tmp_path / "whole", save_steps=10))
    first = train(private_config(data, tmp_path / "split", save_steps=10), callbacks=[StopAt(10)])
    assert first.metrics["privacy/epsilon"] < whole.metrics["privacy/epsilon"]
    resumed = train(private_config(data, tmp_path / "split", save_steps=10), resume=True)
    assert resumed.metrics["privacy/steps"] == 20
    assert resumed.metrics["privacy/epsilon"] == pytest.approx(whole.metrics["privacy/epsilon"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"data": {"packing": True}}, "data.packing"),
        ({"training": {"gradient_accumulation_steps": 2}}, "gradient_accumulation_steps: 1"),
        ({"training": {"gradient_checkpointing": True}}, "gradient_checkpointing"),
        ({"method": {"name": "dpo"}}, "method.name: sft"),
        ({"adapter": {"method": "ia3"}}, "adapter.method: full"),
    ],
)
def test_what_dp_sgd_cannot_do_is_refused(tmp_path, data, change, reason):
    config = tiny_config(data, tmp_path / "run", training={"privacy": {"epsilon": 8}})
    for section, values in change.items():
        config[section] = {**config.get(section, {}), **values} if section != "adapter" else values
    with pytest.raises(ValidationError, match=reason):
        Config.model_validate(config)


def test_a_batch_as_large_as_the_data_is_refused():
    from llm_finetuning.config.privacy import PrivacyConfig
    from llm_finetuning.errors import UserError

    with pytest.raises(UserError, match="below the number of training examples"):
        plan(PrivacyConfig(epsilon=8), examples=8, batch_size=8, epochs=1, max_steps=None)
