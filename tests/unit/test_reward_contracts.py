"""Rewards are checked before training: each broken reward is named with its problem."""

from __future__ import annotations

import logging

import pytest

from llm_finetuning.config.grpo import RewardEntry
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.rewards.contracts import check_rewards, resolve_rewards, sample_batch

pytestmark = pytest.mark.unit
ROWS = [
    {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"},
    {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6"},
]


def own(name: str, weight: float | None = None) -> RewardEntry:
    return RewardEntry(name=name, function=f"tests.e2e.grpo_rewards:{name}", weight=weight)


def test_sample_batch_has_trl_shape_two_completions_per_row_and_columns_repeated():
    batch = sample_batch(ROWS)
    assert len(batch["completions"]) == len(batch["prompts"]) == len(batch["answer"]) == 4
    assert batch["answer"] == ["4", "4", "6", "6"]
    ideal, empty = batch["completions"][:2]
    assert (
        ideal == [{"role": "assistant", "content": ideal[0]["content"]}]
        and "<answer>\n4\n</answer>" in ideal[0]["content"]
    )
    assert empty == [{"role": "assistant", "content": ""}]


def test_a_working_reward_passes_and_keeps_its_weight():
    rewards = resolve_rewards([own("digit_share", 0.5)])
    check_rewards(rewards, ROWS)
    assert [(r.name, r.weight) for r in rewards] == [("digit_share", 0.5)]
    assert resolve_rewards([own("digit_share")])[0].weight == 1.0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("needs_answer", "add `**kwargs`"),
        ("wrong_length", "returned 1 values for 4 completions"),
        ("not_finite", "returned nan for completion 0; rewards must be finite"),
        ("returns_none", "returned None (NoneType) for completion 0; return a float"),
        ("raises", "raised KeyError: 'gold' on a sample batch of 4 completions"),
        ("needs_missing_column", "its parameter `solution` is not a column of the data (columns: answer)"),
    ],
)
def test_each_broken_reward_is_named_with_its_problem(name, message):
    with pytest.raises(UserError) as error:
        check_rewards(resolve_rewards([own("digit_share"), own(name)]), ROWS)
    text = str(error.value)
    assert f"reward `{name}`: " in text and message in text
    assert "digit_share" not in text  # the working one is not reported


def test_all_problems_are_reported_at_once():
    with pytest.raises(UserError) as error:
        check_rewards(resolve_rewards([own("raises"), own("not_finite")]), ROWS)
    assert "reward `raises`" in str(error.value) and "reward `not_finite`" in str(error.value)


def test_unimportable_function_names_the_key():
    with pytest.raises(ConfigError, match=r"method.rewards.0.function: cannot import `nowhere:fn`"):
        resolve_rewards([RewardEntry(name="x", function="nowhere:fn")])


def test_unknown_library_reward_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown reward `answer_corectness`"):
        resolve_rewards([RewardEntry(name="answer_corectness")])


def test_format_weights_that_can_outscore_correctness_are_warned(caplog):
    from llm_finetuning.rewards.base import RewardSpec
    from llm_finetuning.rewards.contracts import Reward, _warn_if_format_dominates

    def zero(completions, **_):
        return [0.0] * len(completions)

    correct = RewardSpec("c", "", "correctness", fn=zero, max_value=3.0)
    shape = RewardSpec("f", "", "format", fn=zero, max_value=1.0)
    with caplog.at_level(logging.WARNING):
        _warn_if_format_dominates([Reward("c", zero, 1.0, correct), Reward("f", zero, 2.0, shape)])
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        _warn_if_format_dominates([Reward("c", zero, 1.0, correct), Reward("f", zero, 3.0, shape)])
    assert "can add up to 3.00, at least the 3.00 a correct answer earns" in caplog.text
