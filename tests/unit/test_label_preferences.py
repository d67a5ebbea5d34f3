"""`llmft data label-preferences` (RLAIF) against scripted judge endpoints on 127.0.0.1: one that judges by
content, one that always picks the first position, one that scores; exact rows, counts and agreement rates."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.data import label_preferences as labelling
from llm_finetuning.data.formats import to_record
from llm_finetuning.errors import DataError
from llm_finetuning.judge import JudgeClient

QUALITY = {"GOOD": 3, "fine": 2, "meh": 1, "bad": 0}


def quality(text: str) -> int:
    return max(q for word, q in QUALITY.items() if word in text)


class Judge:
    """An OpenAI-compatible endpoint whose verdicts follow `policy(user_text) -> reply`."""

    def __init__(self, policy) -> None:
        self.policy, self.requests = policy, 0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests += 1
                reply = judge.policy(body["messages"][-1]["content"])
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def config(self, **options) -> JudgeConfig:
        port = self.server.server_address[1]
        return JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="judge", api_key_env=None, **options)


def by_content(user: str) -> str:
    first, second = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)", user, re.S).groups()
    a, b = quality(first), quality(second)
    return json.dumps({"winner": "A" if a > b else "B" if b > a else "tie"})


def first_position(user: str) -> str:
    return '{"winner": "A"}'


def scores(user: str) -> str:
    return json.dumps({"score": 1 + quality(user.split("Response:\n", 1)[1])})


ROWS = [
    {"prompt": "Explain tides", "completions": ["meh answer", "GOOD answer", "bad answer"]},
    {"prompt": [{"role": "user", "content": "Name a colour"}], "completions": ["fine: blue", "bad: seven"]},
]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture
def judged(request):
    judge = Judge(request.param)
    yield judge
    judge.server.shutdown()


@pytest.mark.parametrize("judged", [by_content], indirect=True)
def test_pairwise_ranks_by_wins_over_both_orders(judged, source):
    with JudgeClient(judged.config(cache=False)) as client:
        rows, stats = labelling.label_preferences(labelling.read_candidates(source), client)
    assert judged.requests == 2 * (3 + 1)  # every pair, both orders
    assert [r["chosen"][0]["content"] for r in rows] == ["GOOD answer", "fine: blue"]
    assert [r["rejected"][0]["content"] for r in rows] == ["bad answer", "bad: seven"]
    assert rows[0]["provenance"] == {"judge": "judge", "mode": "pairwise", "wins": [1.0, 2.0, 0.0], "source": 1}
    assert rows[1]["prompt"] == [{"role": "user", "content": "Name a colour"}]
    assert stats.agreement_rate == 1.0 and stats.pairs == 4 and stats.rows == 2
    assert stats.as_dict()["first_position_rate"] == 0.5  # a fair judge names each position half the time
    for row in rows:  # what DPO and the reward model read
        record = to_record(row, "preference", {})
        assert record["chosen"][-1]["content"] == row["chosen"][0]["content"]


@pytest.mark.parametrize("judged", [first_position], indirect=True)
def test_a_judge_that_only_picks_a_position_teaches_nothing(judged, source):
    with JudgeClient(judged.config(cache=False)) as client:
        rows, stats = labelling.label_preferences(labelling.read_candidates(source), client)
    assert rows == [] and stats.skipped_level == 2
    assert stats.agreement_rate == 0.0 and stats.as_dict()["first_position_rate"] == 1.0


@pytest.mark.parametrize("judged", [scores], indirect=True)
def test_scored_mode_into_kto_rows(judged, source):
    with JudgeClient(judged.config(cache=False)) as client:
        rows, stats = labelling.label_preferences(labelling.read_candidates(source), client, "scored", "kto")
    assert judged.requests == 5 and stats.agreement_rate is None
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("GOOD answer", True),
        ("bad answer", False),
        ("fine: blue", True),
        ("bad: seven", False),
    ]
    assert rows[0]["provenance"]["scores"] == pytest.approx([0.25, 0.75, 0.0])  # 2, 4, 1 on 1-5 as (s - 1) / 4
    for row in rows:
        assert to_record(row, "unpaired", {})["label"] is row["label"]


@pytest.mark.parametrize("judged", [by_content], indirect=True)
def test_the_cli_writes_rows_and_reports_agreement_and_reuses_the_cache(judged, source, tmp_path):
    config = tmp_path / "judge.yaml"
    config.write_text(json.dumps(judged.config(cache=str(tmp_path / "cache")).model_dump()))
    out = tmp_path / "prefs.jsonl"
    args = ["data", "label-preferences", str(source), "--judge-config", str(config), "--output", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "agreement across position swaps: 100.0%" in result.output
    assert len(out.read_text().splitlines()) == 2 and judged.requests == 8
    again = CliRunner().invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0 and judged.requests == 8  # every verdict came from the cache
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "--overwrite" in refused.output


def test_bad_rows_stop_before_any_judge_call(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "x", "completions": ["only one"]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field `completions`"):
        labelling.read_candidates(path)


@pytest.mark.parametrize(
    ("reply", "winner"),
    [('{"winner": "A"}', "A"), ("Winner: b", "B"), ('{"winner": "tie"}', "tie"), ("B", "B"), ("no idea", None)],
)
def test_parse_winner(reply, winner):
    assert labelling.parse_winner(reply) == winner
