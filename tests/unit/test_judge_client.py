"""The judge client against a scripted endpoint on 127.0.0.1: retries, backoff, timeouts, budget, cache,
concurrency, fallbacks and their counts, and the API key's handling."""

from __future__ import annotations

import logging
import random

import pytest

from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.errors import UserError
from llm_finetuning.judge import RUBRICS, JudgeClient, JudgeItem, judge_metrics
from llm_finetuning.judge.transport import backoff_delay, parse_retry_after
from tests.unit.judge_stub import Reply, Stub

pytestmark = pytest.mark.unit

CORRECT = RUBRICS["correctness"]
RELEVANCY = RUBRICS["answer_relevancy"]
ITEM = JudgeItem(answer="Paris", references=("Paris",), question="Capital of France?")


@pytest.fixture
def stub():
    with Stub() as running:
        yield running


@pytest.fixture
def make(stub, tmp_path, monkeypatch):
    """A client of the stub that records its backoff sleeps instead of sleeping."""
    monkeypatch.delenv("LLMFT_JUDGE_API_KEY", raising=False)
    clients, sleeps = [], []

    def build(**options) -> JudgeClient:
        options.setdefault("cache", False)
        options.setdefault("backoff_s", 0.001)
        options.setdefault("max_backoff_s", 5.0)
        config = JudgeConfig(base_url=stub.base_url, model=options.pop("model", "judge-m"), **options)
        client = JudgeClient(config, cache_dir=tmp_path / "cache", sleep=sleeps.append, rng=random.Random(0))
        client.sleeps = sleeps
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def test_success_scores_and_counts_one_call(stub, make):
    stub.play(Reply(content='{"correct": "yes"}'))
    client = make()
    assert client.score(CORRECT, ITEM) == 1.0
    assert stub.requests == 1
    body = stub.bodies[0]
    assert body["model"] == "judge-m" and body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert judge_metrics(client) == {
        "judge/requests": 1.0,
        "judge/calls": 1.0,
        "judge/cache_hits": 0.0,
        "judge/retries": 0.0,
        "judge/failures": 0.0,
        "judge/fallbacks": 0.0,
        "judge/budget_refusals": 0.0,
        "judge/prompt_tokens": 0.0,
        "judge/completion_tokens": 0.0,
    }


def test_429_is_retried_after_the_servers_retry_after(stub, make):
    stub.play(Reply(status=429, content="slow down", headers={"Retry-After": "0.25"}), Reply(content="Score: 5"))
    client = make(backoff_s=0.001)
    assert client.score(RELEVANCY, ITEM) == 1.0
    assert stub.requests == 2
    assert client.sleeps == [0.25]  # the jittered backoff (~0.001 s) is raised to the server's 0.25 s
    stats = client.stats.snapshot()
    assert (stats["calls"], stats["retries"], stats["failures"], stats["fallbacks"]) == (2, 1, 1, 0)


def test_5xx_gives_up_after_max_retries_with_growing_backoff(stub, make):
    stub.play(Reply(status=500, content="boom"))
    client = make(max_retries=2, backoff_s=0.1, fallback_score=0.3)
    assert client.score(RELEVANCY, ITEM) == 0.3
    assert stub.requests == 3  # one attempt + two retries
    first, second = client.sleeps
    assert 0.05 <= first <= 0.1 and 0.1 <= second <= 0.2  # base 0.1 doubled, jittered x0.5-1
    stats = client.stats.snapshot()
    assert (stats["failures"], stats["retries"], stats["fallbacks"]) == (3, 2, 1)


def test_other_4xx_are_not_retried(stub, make):
    stub.play(Reply(status=400, content="bad request"))
    client = make(max_retries=3)
    assert client.score(RELEVANCY, ITEM) == 0.0
    assert stub.requests == 1 and client.sleeps == []
    assert client.stats.snapshot()["fallbacks"] == 1


@pytest.mark.parametrize(
    "reply",
    [Reply(content="The answer looks fine to me."), Reply(content=None, raw=b"<html>gateway</html>")],
    ids=["unparseable-reply", "not-a-chat-completion"],
)
def test_garbage_gives_the_fallback_and_is_counted_not_cached(stub, make, reply):
    stub.play(reply)
    client = make(cache=True, fallback_score=0.5)
    assert client.score(RELEVANCY, ITEM) == 0.5
    assert client.score(RELEVANCY, ITEM) == 0.5
    assert stub.requests == 2  # a garbage reply is not cached: asked again
    stats = client.stats.snapshot()
    assert (stats["failures"], stats["fallbacks"], stats["cache_hits"], stats["retries"]) == (2, 2, 0, 0)


def test_a_slow_reply_times_out_and_is_retried(stub, make):
    stub.play(Reply(content='{"score": 3}', delay=5.0), Reply(content='{"score": 3}'))
    client = make(timeout_s=0.75, max_retries=1)  # generous: the fast reply must arrive in time on a busy machine
    assert client.score(RELEVANCY, ITEM) == 0.5
    assert stub.requests == 2
    assert client.stats.snapshot()["retries"] == 1


def test_always_slow_gives_the_fallback(stub, make):
    stub.play(Reply(content='{"score": 3}', delay=5.0))
    client = make(timeout_s=0.2, max_retries=1, fallback_score=0.25)
    assert client.score(RELEVANCY, ITEM) == 0.25
    assert stub.requests == 2
    assert client.stats.snapshot()["fallbacks"] == 1


def test_budget_stops_requests_and_falls_back(stub, make, caplog):
    stub.play(Reply(content='{"score": 5}'))
    client = make(budget=3, max_concurrency=1, fallback_score=0.1)
    items = [JudgeItem(answer=f"answer {i}", question="q") for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="llm_finetuning.judge"):
        assert client.score_many(RELEVANCY, items) == [1.0, 1.0, 1.0, 0.1, 0.1]
    assert stub.requests == 3
    stats = client.stats.snapshot()
    assert (stats["calls"], stats["budget_refusals"], stats["fallbacks"]) == (3, 2, 2)
    assert sum("budget of 3 calls" in r.getMessage() for r in caplog.records) == 1  # said once


def test_retries_spend_the_budget_too(stub, make):
    stub.play(Reply(status=503, content="busy"))
    client = make(budget=2, max_retries=5)
    assert client.score(RELEVANCY, ITEM) == 0.0
    assert stub.requests == 2
    assert client.stats.snapshot()["budget_refusals"] == 1


def test_cache_answers_repeats_across_clients_and_keys_on_the_judge(stub, make):
    stub.play(Reply(content='{"score": 2}'))
    first = make(cache=True)
    assert first.score(RELEVANCY, ITEM) == 0.25
    assert first.score(RELEVANCY, ITEM) == 0.25
    assert stub.requests == 1 and first.stats.snapshot()["cache_hits"] == 1
    second = make(cache=True)  # a new client (a new run) on the same cache directory
    assert second.score(RELEVANCY, ITEM) == 0.25
    assert stub.requests == 1 and second.stats.snapshot()["calls"] == 0
    other_answer = JudgeItem(answer="Lyon", references=ITEM.references, question=ITEM.question)
    assert second.score(RELEVANCY, other_answer) == 0.25
    assert stub.requests == 2  # another answer is another key
    other_judge = make(cache=True, model="judge-other")
    other_judge.score(RELEVANCY, ITEM)
    assert stub.requests == 3  # another judge model never reuses scores


def test_cache_directory_from_config(stub, make, tmp_path):
    stub.play(Reply(content='{"score": 4}'))
    make(cache=str(tmp_path / "mine")).score(RELEVANCY, ITEM)
    assert (tmp_path / "mine" / "judge_cache.sqlite").is_file()


def test_in_flight_requests_never_exceed_max_concurrency(stub, make):
    # Each request waits (up to 1 s) for a third one in flight: a client allowing 3 would be caught at 3, and the
    # limit of 2 is seen reached, not merely respected.
    stub.wait_for_peers = 3
    stub.play(Reply(content='{"score": 4}'))
    client = make(max_concurrency=2)
    items = [JudgeItem(answer=f"a{i}", question="q") for i in range(4)]
    assert client.score_many(RELEVANCY, items) == [0.75] * 4
    assert stub.requests == 4
    assert stub.max_in_flight == 2


def test_identical_completions_are_judged_once(stub, make):
    stub.play(Reply(content='{"score": 1}'))
    client = make()
    assert client.score_many(RELEVANCY, [ITEM] * 4) == [0.0] * 4
    assert stub.requests == 1


def test_failures_are_warned_once_per_n_not_per_call(stub, make, caplog):
    stub.play(Reply(content="no idea"))
    client = make(warn_every=3)
    items = [JudgeItem(answer=f"a{i}", question="q") for i in range(7)]
    with caplog.at_level(logging.WARNING, logger="llm_finetuning.judge"):
        assert client.score_many(RELEVANCY, items) == [0.0] * 7
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(int(w.split()[2]) for w in warnings) == [1, 3, 6]  # at the 1st, 3rd and 6th fallback only


def test_missing_reference_falls_back_without_a_request(stub, make):
    client = make(fallback_score=0.2)
    assert client.score(CORRECT, JudgeItem(answer="Paris")) == 0.2
    assert stub.requests == 0


# ------------------------------------------------------------------------------------------------ the key
def test_key_is_sent_but_never_logged(stub, make, monkeypatch, caplog):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", secret)
    stub.play(Reply(status=500, content="x"), Reply(content="garbage"), Reply(content='{"correct": "yes"}'))
    with caplog.at_level(logging.DEBUG):
        client = make(api_key_env="JUDGE_KEY_FOR_TEST", max_retries=1)
        items = [JudgeItem(answer=a, references=("Paris",), question="q") for a in ("Paris", "Lyon", "Nice")]
        client.score_many(CORRECT, items)
    assert stub.requests >= 3
    assert set(stub.authorizations) == {f"Bearer {secret}"}
    assert caplog.records  # the batch did log (calls, failures, fallbacks)
    assert secret not in caplog.text
    assert secret not in repr(client) and secret not in str(client.stats.snapshot())


def test_loopback_without_the_variable_sends_no_key(stub, make):
    client = make(api_key_env="NOT_SET_ANYWHERE_FOR_TEST")
    client.score(RELEVANCY, ITEM)
    assert stub.authorizations == [None]


def test_remote_endpoint_without_the_variable_is_a_user_error(monkeypatch):
    monkeypatch.delenv("REMOTE_JUDGE_KEY", raising=False)
    config = JudgeConfig(base_url="https://judge.example.com/v1", model="m", api_key_env="REMOTE_JUDGE_KEY")
    with pytest.raises(UserError, match="`REMOTE_JUDGE_KEY`"):
        JudgeClient(config)


def test_a_key_pasted_into_the_config_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as info:
        JudgeConfig(model="m", api_key_env="sk-live-abc+def/123")
    assert "NAME of an environment variable" in str(info.value)
    assert "sk-live-abc" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": "judge.example.com/v1"}, "not an http(s) URL"),
        ({"backoff_s": 10, "max_backoff_s": 1}, "above `max_backoff_s`"),
        ({"fallback_score": 2}, "less than or equal to 1"),
    ],
)
def test_config_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JudgeConfig(model="m", **options)


def test_config_trims_the_base_url():
    assert JudgeConfig(model="m", base_url="http://127.0.0.1:9/v1/").base_url == "http://127.0.0.1:9/v1"


# ------------------------------------------------------------------------------------------------ backoff maths
def test_backoff_delay_bounds_and_retry_after_cap():
    rng = random.Random(1)
    for retry in range(6):
        delay = backoff_delay(retry, 0.5, 4.0, None, rng)
        assert min(4.0, 0.5 * 2**retry) * 0.5 <= delay <= min(4.0, 0.5 * 2**retry)
    assert backoff_delay(0, 0.5, 4.0, 3.0, rng) == 3.0
    assert backoff_delay(0, 0.5, 4.0, 60.0, rng) == 4.0  # a huge Retry-After is capped


def test_retry_after_forms():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_a_key_for_another_service_is_not_sent_by_default(stub, make, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-for-openai-only")
    make().score(RELEVANCY, ITEM)
    assert stub.authorizations == [None]  # the default variable is the toolkit's own LLMFT_JUDGE_API_KEY
