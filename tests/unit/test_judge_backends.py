"""The optional deepeval and evidently judge backends: a clear error without their package, and (where the
package is installed) a judgement through the scripted endpoint, with the client's counting."""

from __future__ import annotations

import importlib
import sys

import pytest

from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.errors import UserError
from llm_finetuning.judge import RUBRICS, JudgeClient, JudgeItem, judge_metrics
from tests.unit.judge_stub import Reply, Stub

pytestmark = pytest.mark.unit

ITEM = JudgeItem(answer="Paris", references=("Paris",), question="Capital of France?")


def config(backend: str, base_url: str = "http://127.0.0.1:9/v1") -> JudgeConfig:
    return JudgeConfig(base_url=base_url, model="m", backend=backend, cache=False, api_key_env=None)


@pytest.mark.parametrize("backend", ["deepeval", "evidently"])
def test_missing_package_is_a_clear_user_error(backend, monkeypatch):
    monkeypatch.setitem(sys.modules, backend, None)  # what Python does for a package that is not there
    with pytest.raises(UserError, match=rf"needs the `{backend}` package, which is not installed.*\[{backend}\]"):
        JudgeClient(config(backend))


def test_a_broken_install_says_so(monkeypatch):
    real_import_module = importlib.import_module

    def broken(name, *args, **kwargs):
        if name.split(".")[0] == "evidently":
            raise ImportError("cannot import name 'x' from 'pandas'")
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(UserError, match=r"installed but fails to import \(cannot import name 'x'"):
        JudgeClient(config("evidently"))


def test_deepeval_geval_through_the_client():
    pytest.importorskip("deepeval")
    with Stub() as stub:
        # G-Eval asks for evaluation steps, then for a 0-10 score; one reply serves both requests.
        stub.play(Reply(content='{"steps": ["Compare the facts."], "score": 8, "reason": "close"}'))
        with JudgeClient(config("deepeval", stub.base_url)) as client:
            assert client.score_many(RUBRICS["multihop_qa"], [ITEM]) == [pytest.approx(0.8)]
            metrics = judge_metrics(client)
        assert stub.requests == metrics["judge/calls"] >= 1 and metrics["judge/fallbacks"] == 0
        assert "Paris" in stub.bodies[-1]["messages"][-1]["content"]


def test_evidently_template_through_the_client():
    pytest.importorskip("evidently")
    with Stub() as stub:
        stub.play(Reply(content='{"category": "bad", "score": "0.25"}'), Reply(content="nonsense"))
        with JudgeClient(config("evidently", stub.base_url)) as client:
            assert client.score(RUBRICS["correctness"], ITEM) == 0.25
            assert client.score(RUBRICS["answer_relevancy"], ITEM) == 0.0  # unparseable: the fallback
            metrics = judge_metrics(client)
        assert metrics["judge/calls"] == 2 and metrics["judge/fallbacks"] == 1
        assert "Capital of France?" in stub.bodies[0]["messages"][-1]["content"]
