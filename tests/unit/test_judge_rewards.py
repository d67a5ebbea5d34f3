"""The judged rewards: TRL's calling convention, what the judge is shown, the values returned."""

from __future__ import annotations

import random

import pytest

from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.judge import JudgeClient, judge_metrics
from llm_finetuning.rewards.judged import SPECS, prompt_text
from llm_finetuning.rewards.registry import get_reward
from tests.unit.judge_stub import Reply, Stub

pytestmark = pytest.mark.unit

REASONING = "First, the Eiffel Tower SECRET-CHAIN-OF-THOUGHT stands in"


@pytest.fixture
def stub():
    with Stub() as running:
        yield running


def make_client(stub: Stub, **options) -> JudgeClient:
    options = {"cache": False, "backoff_s": 0.001, "fallback_score": 0.1, **options}
    config = JudgeConfig(base_url=stub.base_url, model="judge", **options)
    return JudgeClient(config, sleep=lambda s: None, rng=random.Random(0))


@pytest.fixture
def client(stub, monkeypatch):
    monkeypatch.delenv("LLMFT_JUDGE_API_KEY", raising=False)
    with make_client(stub) as judge:
        yield judge


def user_messages(stub: Stub) -> list[str]:
    return [body["messages"][-1]["content"] for body in stub.bodies]


def test_specs_are_registered_as_judged_rewards():
    names = {"judge_multihop", "judge_medical", "judge_summarization", "judge_relevancy", "judge_correctness"}
    assert {spec.name for spec in SPECS} == names
    for name in names:
        spec = get_reward(name)
        assert spec.kind == "judge" and spec.fn is None and spec.build is not None and spec.max_value == 1.0
    assert get_reward("judge_multihop").references == ("answers", "answer")
    assert get_reward("judge_relevancy").references == ()


def test_judge_sees_the_extracted_answer_and_the_reference_not_the_reasoning(stub, client):
    stub.play(Reply(content='{"factual_accuracy": 5, "supporting_evidence": 4, "completeness": 3}'))
    reward = get_reward("judge_multihop").build(client)
    completion = f"<reasoning>{REASONING}</reasoning>\n<answer>Paris</answer>"
    scores = reward(
        prompts=[[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the tower?"}]],
        completions=[[{"role": "assistant", "content": completion}]],
        completion_ids=[[1, 2]],
        answers=[["Paris", "Paris, France"]],
        unrelated_column=["ignored"],
    )
    assert scores == [pytest.approx((4 + 3 + 2) / 12)]
    (text,) = user_messages(stub)
    assert "Candidate answer:\nParis\n" in text
    assert "SECRET-CHAIN-OF-THOUGHT" not in text and "<answer>" not in text
    assert "- Paris\n- Paris, France" in text
    assert "Where is the tower?" in text and "Be brief." not in text  # the question, not the system prompt
    assert reward.__name__ == "judge_multihop"


def test_a_batch_is_one_float_per_completion_with_fallbacks(stub, monkeypatch):
    monkeypatch.delenv("LLMFT_JUDGE_API_KEY", raising=False)
    stub.play(Reply(content="yes"), Reply(content="no"), Reply(content="I cannot tell"))
    client = make_client(stub, max_concurrency=1)  # one at a time: the scripted replies go in submission order
    reward = get_reward("judge_correctness").build(client)
    completions = ["<answer>4</answer>", "<answer>5</answer>", "<answer>6</answer>", "<answer>4</answer>"]
    scores = reward(prompts=["2+2?"] * 4, completions=completions, answer=["4"] * 4)
    client.close()
    assert scores == [1.0, 0.0, 0.1, 1.0]  # the repeated completion is judged once
    assert all(isinstance(s, float) for s in scores)
    assert stub.requests == 3
    metrics = judge_metrics(client)
    assert metrics["judge/calls"] == 3 and metrics["judge/fallbacks"] == 1 and metrics["judge/failures"] == 1


def test_a_completion_without_tags_is_judged_whole(stub, client):
    stub.play(Reply(content="Score: 5"))
    reward = get_reward("judge_relevancy").build(client)
    assert reward(prompts=["Name a colour."], completions=["  Blue, like the sky.  "]) == [1.0]
    text = user_messages(stub)[0]
    assert "Candidate answer:\nBlue, like the sky." in text and "Reference" not in text


def test_medical_reference_joins_the_letter_and_its_text(stub, client):
    stub.play(Reply(content='{"factual_accuracy": 5, "supporting_evidence": 5, "completeness": 5}'))
    reward = get_reward("judge_medical").build(client)
    scores = reward(
        prompts=["Which drug?\nA. Aspirin\nB. Metformin"],
        completions=["<reasoning>glucose</reasoning><answer>B</answer>"],
        answer=["B"],
        answer_text=["Metformin"],
    )
    assert scores == [1.0]
    assert "Reference answer:\nB (Metformin)" in user_messages(stub)[0]
    assert "physician" in stub.bodies[0]["messages"][0]["content"]


def test_summarization_shows_the_source_and_an_optional_reference(stub, client):
    stub.play(Reply(content='{"consistency": 4, "relevance": 4, "coherence": 4}'))
    reward = get_reward("judge_summarization").build(client)
    assert reward(prompts=["Summarise: the cat sat."], completions=["A cat sat."], summary=["The cat sat."]) == [0.75]
    assert reward(prompts=["Summarise: the dog ran."], completions=["A dog ran."]) == [0.75]
    with_reference, without = user_messages(stub)
    assert "Source document:\nSummarise: the cat sat." in with_reference
    assert "Reference summary:\nThe cat sat." in with_reference
    assert "Reference summary" not in without


def test_a_row_without_reference_gets_the_fallback_without_a_request(stub, client):
    reward = get_reward("judge_correctness").build(client)
    assert reward(prompts=["q"], completions=["a"], answer=[None]) == [0.1]
    assert stub.requests == 0


def test_an_endpoint_that_is_down_never_raises(monkeypatch):
    monkeypatch.delenv("LLMFT_JUDGE_API_KEY", raising=False)
    with Stub() as dead:
        url = dead.base_url
    config = JudgeConfig(base_url=url, model="m", cache=False, max_retries=1, backoff_s=0, fallback_score=0.2)
    with JudgeClient(config, sleep=lambda s: None) as judge:
        reward = get_reward("judge_multihop").build(judge)
        assert reward(prompts=["q", "q"], completions=["a", "b"], answers=[["x"], ["x"]]) == [0.2, 0.2]
        stats = judge.stats.snapshot()
    assert (stats["calls"], stats["failures"], stats["fallbacks"]) == (4, 4, 2)


def test_prompt_text_forms():
    assert prompt_text("plain") == "plain"
    assert prompt_text([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]) == "two"
    assert prompt_text([{"role": "system", "content": "s"}]) == "s"  # no user turn: the whole text
