"""Judged rewards over real HTTP against the project's own OpenAI-compatible server.

Two judges: a random tiny model served in-process (it replies garbage, so every judgement falls back and is
counted), and a model whose weights are set by hand to reply `Score: 4` to any prompt, served by a real
`llmft serve` process on a free loopback port (so the rewards equal hand-computed values).

The scoring model: its decoder layers write nothing to the residual stream (zero output projections), so the
next-token logits depend on the current token only; its embeddings and output rows make the chain
newline -> S -> c -> o -> r -> e -> : -> space -> 4 -> end-of-turn. The chat prompt ends with a newline, so
greedy decoding answers `Score: 4` whatever the judge prompt holds. No training needed, fully deterministic.
"""

from __future__ import annotations

import logging
import threading

import pytest

from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.judge import JudgeClient, judge_metrics
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.rewards.registry import get_reward
from llm_finetuning.serve.server import Engine, ServerLimits, create_server
from tests.synth_fixtures import save_fixed_reply_model, start_llmft_serve

pytestmark = pytest.mark.e2e

KEY = "e2e-judge-SECRET-key-42"
REPLY = "Score: 4"
BATCH = {
    "prompts": [[{"role": "user", "content": q}] for q in ("Who wrote Hamlet?", "Capital of France?") * 2],
    "completions": [
        "<reasoning>He was English.</reasoning><answer>Shakespeare</answer>",
        "<reasoning>Big city.</reasoning><answer>Lyon</answer>",
        "Christopher Marlowe",
        "<answer>Paris</answer>",
    ],
    "answers": [["William Shakespeare"], ["Paris"], ["William Shakespeare"], ["Paris"]],
}


@pytest.fixture(scope="module")
def garbage_url():
    """A random tiny model behind the server, in-process on a free loopback port."""
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2), tokenizer)
    server = create_server(Engine(model, tokenizer, "tiny-random"), "127.0.0.1", 0, None, ServerLimits(max_tokens=32))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def scoring_url(tmp_path_factory):
    """`llmft serve` of the scoring model in its own process, with an API key; yields its base URL."""
    directory = tmp_path_factory.mktemp("judge-model")
    save_fixed_reply_model(directory, REPLY)
    args = ("--max-tokens", "32", "--model-id", "scorer")
    process, url = start_llmft_serve(directory, *args, env={"LLMFT_API_KEY": KEY})
    yield url
    process.terminate()
    process.wait(timeout=30)


def judge(url: str, model: str, tmp_path, **options) -> JudgeClient:
    options = {"cache": str(tmp_path / "cache"), "max_tokens": 16, "max_retries": 1, "backoff_s": 0.01, **options}
    return JudgeClient(JudgeConfig(base_url=url, model=model, **options))


def test_a_garbage_judge_falls_back_on_every_completion_and_counts_it(garbage_url, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("LLMFT_JUDGE_API_KEY", raising=False)
    with judge(garbage_url, "tiny-random", tmp_path, fallback_score=0.2) as client:
        reward = get_reward("judge_multihop").build(client)
        with caplog.at_level(logging.DEBUG, logger="llm_finetuning.judge"):
            assert reward(**BATCH) == [0.2] * 4
        metrics = judge_metrics(client)
    # Four HTTP 200 replies that did not parse: no retries (a retry at temperature 0 would repeat them).
    assert metrics["judge/calls"] == 4 and metrics["judge/retries"] == 0
    assert metrics["judge/failures"] == 4 and metrics["judge/fallbacks"] == 4
    assert sum("unparseable judge reply" in r.getMessage() for r in caplog.records) == 4
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1  # one warning, not one per call


def test_the_served_judge_scores_over_real_http(scoring_url, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("E2E_JUDGE_KEY", KEY)
    with caplog.at_level(logging.DEBUG):
        with judge(scoring_url, "scorer", tmp_path, api_key_env="E2E_JUDGE_KEY") as client:
            relevancy = get_reward("judge_relevancy").build(client)
            multihop = get_reward("judge_multihop").build(client)
            # `Score: 4` -> (4 - 1) / 4; the criteria rubric reads it as an overall score.
            assert relevancy(**BATCH) == [0.75] * 4
            assert multihop(**BATCH) == [0.75] * 4
            assert judge_metrics(client)["judge/calls"] == 8
            assert multihop(**BATCH) == [0.75] * 4  # again: from the cache
            metrics = judge_metrics(client)
    assert metrics["judge/calls"] == 8 and metrics["judge/cache_hits"] == 4
    assert metrics["judge/failures"] == 0 and metrics["judge/fallbacks"] == 0
    assert KEY not in caplog.text


def test_a_wrong_key_is_a_counted_fallback_not_retried(scoring_url, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("E2E_JUDGE_KEY", "wrong-key")
    with judge(scoring_url, "scorer", tmp_path, api_key_env="E2E_JUDGE_KEY", cache=False, max_retries=3) as client:
        reward = get_reward("judge_relevancy").build(client)
        with caplog.at_level(logging.WARNING, logger="llm_finetuning.judge"):
            assert reward(prompts=["Who?"], completions=["Me"]) == [0.0]
        metrics = judge_metrics(client)
    assert metrics["judge/calls"] == 1 and metrics["judge/retries"] == 0  # a 401 is not retried
    assert metrics["judge/fallbacks"] == 1
    assert "HTTP 401" in caplog.text and "check the API key in `E2E_JUDGE_KEY`" in caplog.text
    assert "wrong-key" not in caplog.text
