"""GRPO end to end on a tiny model: it trains what it should, rewards are logged, broken rewards stop it early."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from safetensors.torch import load_file

from llm_finetuning.config import Config
from llm_finetuning.errors import UserError
from llm_finetuning.train import train
from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning"),
]
OWN = "tests.e2e.grpo_rewards"


def prompts(n: int = 16) -> list[dict]:
    return [{"prompt": f"Write the number {i * 7}.", "answer": str(i * 7)} for i in range(n)]


def grpo_config(tmp_path, write_jsonl, rewards=None, steps=3, **sections):
    method = {
        "name": "grpo",
        "num_generations": 4,
        "max_completion_length": 8,
        "rewards": rewards or [{"name": "digit_share", "function": f"{OWN}:digit_share"}],
        **sections.pop("method", {}),
    }
    data = {"train": {"path": str(write_jsonl(prompts())), "format": "prompt_only"}, "max_length": 64}
    raw = tiny_config(tmp_path / "unused", tmp_path / "run", data=data, method=method, **sections)
    raw["training"] = {**raw["training"], "max_steps": steps, "per_device_batch_size": 8}
    return Config.model_validate(raw)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lora_grpo_trains_the_adapter_only_and_logs_each_reward(tmp_path, write_jsonl):
    config = grpo_config(tmp_path, write_jsonl)
    result = train(config)
    assert result.status == "completed"
    run = result.run.root
    final = load_file(run / "final" / "adapter_model.safetensors")
    # LoRA B starts at zero: non-zero B matrices are what training wrote; only adapter weights are saved.
    assert all("lora_" in k for k in final)
    assert any("lora_B" in k and final[k].abs().sum() > 0 for k in final)
    logged = metrics(run)
    assert any("rewards/digit_share/mean" in row for row in logged)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["data"]["stats"]["train"]["examples"] == 16


def test_grpo_learns_to_raise_its_reward(tmp_path, write_jsonl):
    # The digit share of a random byte-level model is about 10/260; GRPO must move the sampled completions
    # towards digits. Full weights: the output head must move (TRL cannot train an adapter on it).
    config = grpo_config(
        tmp_path,
        write_jsonl,
        steps=30,
        adapter={"method": "full"},
        method={"beta": 0.0},
        training={"learning_rate": 1e-2},
    )
    run = train(config).run.root
    rewards = [row["reward"] for row in metrics(run) if "reward" in row]
    assert len(rewards) == 30
    start, end = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert end > 3 * start and end > 0.15, rewards


def test_full_weights_with_kl_use_a_reference_model(tmp_path, write_jsonl):
    config = grpo_config(tmp_path, write_jsonl, adapter={"method": "full"}, method={"beta": 0.1})
    run = train(config).run.root
    assert any("kl" in row for row in metrics(run))
    base = load_file(run / "base" / "model.safetensors")
    final = load_file(run / "final" / "model.safetensors")
    assert any(not torch.equal(final[k], base[k]) for k in base if k in final)


def test_qlora_grpo_runs(tmp_path, write_jsonl):
    config = grpo_config(tmp_path, write_jsonl, model={"quantization": "nf4"}, steps=2)
    assert train(config).status == "completed"


def test_a_broken_reward_stops_before_any_training_step(tmp_path, write_jsonl):
    rewards = [
        {"name": "digit_share", "function": f"{OWN}:digit_share"},
        {"name": "wrong_length", "function": f"{OWN}:wrong_length"},
    ]
    config = grpo_config(tmp_path, write_jsonl, rewards=rewards)
    with pytest.raises(UserError, match=r"reward `wrong_length`: returned 1 values for 8 completions"):
        train(config)
    run = tmp_path / "run"
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()
    assert not any((run / "checkpoints").glob("checkpoint-*"))


def test_an_adapter_on_the_output_head_is_refused(tmp_path, write_jsonl):
    from pydantic import ValidationError

    raw = grpo_config(tmp_path, write_jsonl).model_dump()
    raw["adapter"]["target_modules"] = ["q_proj", "lm_head"]
    with pytest.raises(ValidationError, match="includes `lm_head`, which GRPO cannot train through an adapter"):
        Config.model_validate(raw)


def test_batch_must_hold_whole_groups(tmp_path, write_jsonl):
    from pydantic import ValidationError

    with pytest.raises(
        ValidationError, match="6 completions per step is not a multiple of `method.num_generations: 4`"
    ):
        raw = grpo_config(tmp_path, write_jsonl).model_dump()
        raw["training"]["per_device_batch_size"] = 6
        Config.model_validate(raw)


def test_prompts_longer_than_the_limit_are_dropped_and_counted(tmp_path, write_jsonl):
    rows = prompts(8) + [{"prompt": "x" * 500, "answer": "1"}]
    raw = grpo_config(tmp_path, write_jsonl, method={"max_prompt_length": 100}, steps=1).model_dump()
    raw["data"]["train"][0]["path"] = str(write_jsonl(rows, "long.jsonl"))
    run = train(Config.model_validate(raw)).run.root
    stats = json.loads((run / "manifest.json").read_text())["data"]["stats"]["train"]
    assert stats["rows"] == 9 and stats["examples"] == 8 and stats["dropped_no_completion_after_truncation"] == 1


MATH_REWARDS = ["answer_correctness", "reasoning_tags", "step_format", "multiline_compliance", "response_structure"]


def test_grpo_on_real_gsm8k_prompts_with_the_five_math_rewards(tmp_path):
    from tests.conftest import shared

    source = {
        "dataset": "gsm8k",
        "path": str(shared("gsm8k/train.jsonl")),
        "max_samples": 8,
        "system_prompt": "Answer as <reasoning>...</reasoning> then <answer>...</answer>.",
    }
    raw = tiny_config(
        tmp_path / "unused",
        tmp_path / "run",
        data={"train": source, "max_length": 1024},
        method={
            "name": "grpo",
            "num_generations": 4,
            "max_completion_length": 8,
            "rewards": [{"name": name} for name in MATH_REWARDS],
        },
    )
    raw["training"] = {**raw["training"], "max_steps": 2, "per_device_batch_size": 4}
    result = train(Config.model_validate(raw))
    assert result.status == "completed"
    logged = [row for row in metrics(result.run.root) if "reward" in row]
    assert len(logged) == 2
    for row in logged:
        for name in MATH_REWARDS:
            assert f"rewards/{name}/mean" in row
        # 8 random bytes hold neither `<answer>` nor `####`: "no answer" scores 0.0.
        assert row["rewards/answer_correctness/mean"] == 0.0
        assert 0.0 <= row["reward"] <= 2.0  # the four format rewards give at most 0.5 each


def test_each_logged_step_says_where_its_time_went(tmp_path, write_jsonl):
    config = grpo_config(tmp_path, write_jsonl, training={"gradient_accumulation_steps": 2})
    result = train(config)
    assert result.status == "completed"
    logged = [row for row in metrics(result.run.root) if "step_time" in row]
    assert [row["step"] for row in logged] == [1, 2, 3]
    phases = ("time/generation", "time/rewards", "time/log_probs", "time/train")
    for row in logged:
        assert all(row[name] >= 0 for name in phases)
        assert row["time/generation"] > 0 and row["time/train"] > 0
        # The phases split TRL's own step time (both micro-batches of the step), nothing counted twice or lost.
        assert sum(row[name] for name in phases) == pytest.approx(row["step_time"], rel=0.02)


def test_a_static_generation_cache_is_sized_once_for_prompt_and_completion(tmp_path, write_jsonl, monkeypatch):
    from transformers import cache_utils

    sizes: list[int] = []
    original = cache_utils.StaticCache.__init__

    def spy(self, *args, max_cache_len=None, **kwargs):
        sizes.append(max_cache_len)
        original(self, *args, max_cache_len=max_cache_len, **kwargs)

    monkeypatch.setattr(cache_utils.StaticCache, "__init__", spy)
    config = grpo_config(tmp_path, write_jsonl, steps=2, method={"generation_cache": "static"})
    result = train(config)
    assert result.status == "completed"
    # every generation of both steps used the static cache of data.max_length (64) + max_completion_length (8)
    assert len(sizes) >= 2 and set(sizes) == {72}
    assert any("rewards/digit_share/mean" in row for row in metrics(result.run.root))


def test_a_static_cache_is_refused_with_vllm(tmp_path, write_jsonl):
    with pytest.raises(ValueError, match="generation_cache: static"):
        grpo_config(tmp_path, write_jsonl, method={"generation_cache": "static", "generation_backend": "vllm"})


def test_sampling_from_merged_weights_trains_the_same_adapter(tmp_path, write_jsonl, monkeypatch):
    from llm_finetuning.models import merged_generation

    installed = []

    def spy(model):
        merged = original(model)
        frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
        installed.append((model, merged, frozen))
        return merged

    original = merged_generation.sample_from_merged
    monkeypatch.setattr(merged_generation, "sample_from_merged", spy)
    runs = {}
    for weights in ("adapter", "merged"):
        config = grpo_config(tmp_path / weights, write_jsonl, steps=2, method={"generation_weights": weights})
        result = train(config)
        assert result.status == "completed"
        runs[weights] = result.run.root
    ((model, merged, frozen),) = installed
    assert merged.refreshes == 2  # one batched generation per optimizer step, each on freshly merged weights
    assert all(torch.equal(frozen[k], v) for k, v in model.named_parameters() if k in frozen)
    # Float32 and dropout 0: the same completions are sampled, so both runs train the same adapter.
    adapter, merged_adapter = (load_file(runs[w] / "final" / "adapter_model.safetensors") for w in runs)
    assert any(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)
    assert all(torch.allclose(adapter[k], merged_adapter[k], atol=1e-5) for k in adapter)
    rewards = [[row.get("rewards/digit_share/mean") for row in metrics(runs[w])] for w in runs]
    assert rewards[0] == rewards[1]
