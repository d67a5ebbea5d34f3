"""PPO through the config and `train()`, alone and as the last stage of sft -> reward -> ppo."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from llm_finetuning.config import Config
from llm_finetuning.errors import ConfigError
from llm_finetuning.stages import run_stages
from llm_finetuning.train import train
from tests.conftest import shared

pytestmark = pytest.mark.e2e

TINY = {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}}
PROMPTS = {"path": "", "format": "prompt_only", "columns": {"prompt": "question"}, "max_samples": 64}


def test_ppo_with_a_reward_function_raises_the_reward(tmp_path):
    config = Config.model_validate(
        {
            "model": TINY,
            "adapter": {"method": "full"},
            "method": {
                "name": "ppo",
                "reward_function": "tests.e2e.ppo_rewards:digits",
                "max_new_tokens": 8,
                "mini_batch_size": 8,
                "kl_coef": 0.03,
            },
            "data": {"train": {**PROMPTS, "path": str(shared("gsm8k/test.jsonl"))}, "max_length": 256},
            "training": {"max_steps": 30, "per_device_batch_size": 16, "learning_rate": 3e-3, "seed": 0},
            "output_dir": str(tmp_path / "run"),
        }
    )
    result = train(config)
    assert result.status == "completed"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records]
    assert len(rewards) == 30 and {"kl", "entropy", "value_loss", "policy_clipfrac"} <= set(records[0])
    assert sum(rewards[-5:]) / 5 > 3 * sum(rewards[:3]) / 3
    assert max(r["kl"] for r in records) < 30
    assert (tmp_path / "run" / "final" / "value_head.safetensors").is_file()
    assert (tmp_path / "run" / "plots" / "loss.png").is_file()


def test_ppo_needs_exactly_one_reward_and_takes_shared_options_from_training():
    base = {"data": {"train": {"path": "x.jsonl", "format": "prompt_only"}}}
    with pytest.raises(ValueError, match="exactly one of `method.reward_model` or `method.reward_function`"):
        Config.model_validate({**base, "method": {"name": "ppo"}})
    with pytest.raises(ValueError, match="set `training.learning_rate` instead of `method.learning_rate`"):
        Config.model_validate({**base, "method": {"name": "ppo", "reward_function": "m:f", "learning_rate": 1.0}})


def test_unimportable_reward_function_is_a_config_error(tmp_path):
    config = Config.model_validate(
        {
            "model": TINY,
            "adapter": {"method": "full"},
            "method": {"name": "ppo", "reward_function": "nowhere:f"},
            "data": {"train": {**PROMPTS, "path": str(shared("gsm8k/test.jsonl"))}},
            "training": {"max_steps": 1, "per_device_batch_size": 8},
            "output_dir": str(tmp_path / "run"),
        }
    )
    with pytest.raises(ConfigError, match="cannot import `nowhere:f`"):
        train(config)
    small = config.model_copy(update={"training": config.training.model_copy(update={"per_device_batch_size": 4})})
    with pytest.raises(ConfigError, match="`mini_batch_size` .8. must divide `training.per_device_batch_size`"):
        train(small, overwrite=True)


def test_sft_then_reward_then_ppo_in_one_file(tmp_path, write_jsonl):
    training = {"max_steps": 2, "per_device_batch_size": 4, "logging_steps": 1}
    alpaca = {
        "path": str(shared("alpaca/alpaca_first100.torchtune_alpaca_tiny.json")),
        "format": "alpaca",
        "max_samples": 8,
    }
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No."} for i in range(8)]
    pairs = {"path": str(write_jsonl(rows, "pairs.jsonl")), "format": "preference"}
    stages = {
        "sft.yaml": {
            "model": TINY,
            "adapter": {"method": "lora", "r": 4},
            "data": {"train": alpaca, "max_length": 512},
            "training": training,
        },
        "reward.yaml": {
            "model": TINY,
            "adapter": {"method": "full"},
            "method": {"name": "reward"},
            "data": {"train": pairs, "max_length": 1024},
            "training": training,
        },
        "ppo.yaml": {
            "model": TINY,
            "adapter": {"method": "lora", "r": 4},
            "method": {"name": "ppo", "max_new_tokens": 4, "mini_batch_size": 4},
            "data": {"train": {**PROMPTS, "path": str(shared("gsm8k/test.jsonl"))}, "max_length": 256},
            "training": training,
        },
    }
    for name, content in stages.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    chain = {
        "output_dir": str(tmp_path / "out"),
        "stages": [
            {"name": "sft", "config": "sft.yaml"},
            {"name": "reward", "config": "reward.yaml", "from": "sft"},
            {"name": "ppo", "config": "ppo.yaml", "from": "sft", "reward_from": "reward"},
        ],
    }
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(chain))
    results = run_stages(tmp_path / "chain.yaml")
    assert [r.status for r in results] == ["completed"] * 3
    ppo = yaml.safe_load((tmp_path / "out" / "ppo" / "config.yaml").read_text())
    assert ppo["method"]["reward_model"] == str(tmp_path / "out" / "reward")
    assert ppo["model"]["name"] == str(tmp_path / "out" / "sft" / "merged")


def test_lora_ppo_sampling_from_merged_weights_trains_the_same_policy(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from llm_finetuning.models import merged_generation

    made = []
    original = merged_generation.sample_from_merged
    monkeypatch.setattr(merged_generation, "sample_from_merged", lambda model: made.append(original(model)) or made[-1])
    finals = []
    for weights in ("adapter", "merged"):
        config = Config.model_validate(
            {
                "model": TINY,
                "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
                "method": {
                    "name": "ppo",
                    "reward_function": "tests.e2e.ppo_rewards:digits",
                    "max_new_tokens": 8,
                    "mini_batch_size": 8,
                    "generation_weights": weights,
                },
                "data": {"train": {**PROMPTS, "path": str(shared("gsm8k/test.jsonl"))}, "max_length": 256},
                "training": {"max_steps": 3, "per_device_batch_size": 8, "learning_rate": 3e-3, "seed": 0},
                "output_dir": str(tmp_path / weights),
            }
        )
        assert train(config).status == "completed"
        finals.append(load_file(tmp_path / weights / "final" / "adapter_model.safetensors"))
    assert len(made) == 1 and made[0].refreshes == 3  # one rollout per step, each from freshly merged weights
    adapter, merged = finals
    assert any(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)
    assert all(torch.allclose(adapter[k], merged[k], atol=1e-5) for k in adapter)
