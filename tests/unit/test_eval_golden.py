"""Golden sets: reading YAML and JSONL files (bad items named by number), scoring exact/contains/regex items by
hand, the per-item diff against a baseline (regressed, fixed, kept, failing) and the tolerance boundary; judged
items and the `judged` task through the real judge client against a local scripted endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.errors import DataError, UserError
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.golden import ModelOutcome, compare, load_golden, run_golden, score_item, score_outputs
from llm_finetuning.evaluation.runner import evaluate_task
from llm_finetuning.judge import JudgeClient
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.serve.generation import generate

pytestmark = pytest.mark.unit

GOLDEN = """
tolerance: 0.25
max_new_tokens: 5
items:
  - {id: capital, prompt: "Capital of France?", exact: ["Paris", "Paris, France"]}
  - {id: colours, prompt: "Name two colours", contains: [red, blue]}
  - {id: number, prompt: [{role: user, content: "Say a number"}], regex: "\\\\b\\\\d+\\\\b"}
  - {prompt: "Is water wet?", contains: "yes", threshold: 0.0}
"""


def test_golden_yaml_and_jsonl_are_read(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(GOLDEN)
    golden = load_golden(path)
    assert golden.ids == ["capital", "colours", "number", "item-4"]
    assert [item.kind for item in golden.items] == ["exact", "contains", "regex", "contains"]
    assert [item.pass_threshold for item in golden.items] == [1.0, 1.0, 1.0, 0.0]
    assert (golden.tolerance, golden.max_new_tokens) == (0.25, 5)
    assert golden.items[2].messages == [{"role": "user", "content": "Say a number"}]

    lines = tmp_path / "golden.jsonl"
    lines.write_text(
        json.dumps({"prompt": "hi", "regex": "(?i)hello"}) + "\n\n" + json.dumps({"prompt": "x", "exact": "y"})
    )
    golden = load_golden(lines)
    assert golden.ids == ["item-1", "item-2"] and golden.tolerance == 0.0


@pytest.mark.parametrize(
    "text,message",
    [
        ("items:\n  - {prompt: a, exact: b, contains: c}", "item 1: .*exactly one expectation"),
        ("items:\n  - {prompt: a, exact: b}\n  - {prompt: a, regex: '(unclosed'}", "item 2: .*not a valid regular"),
        ("items:\n  - {prompt: a, exact: b, threshold: 2}", "item 1: threshold"),
        ("items:\n  - {prompt: a, exact: b}\ntolerence: 0.1", "unknown key.*tolerence"),
        ("items:\n  - {id: a, prompt: a, exact: b}\n  - {id: a, prompt: a, exact: b}", "repeated: \\['a'\\]"),
        ("items: []", "no items"),
    ],
)
def test_bad_golden_files_name_the_item_and_the_problem(tmp_path, text, message):
    path = tmp_path / "golden.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_golden(path)


def test_item_scores_by_hand(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(GOLDEN)
    capital, colours, number, wet = load_golden(path).items
    assert score_item(capital, "The answer: <answer>paris!</answer>") == 1.0  # normalised answer block
    assert score_item(capital, "Paris is the capital") == 0.0  # exact, not contained
    assert score_item(colours, "RED and green") == 0.5  # one of two strings, case-insensitive
    assert score_item(colours, "blue, red") == 1.0
    assert score_item(number, "I pick 42.") == 1.0 and score_item(number, "forty-two") == 0.0
    outcome = score_outputs(load_golden(path), ["Paris", "red", "7", "no"])
    assert outcome.scores == [1.0, 0.5, 1.0, 0.0]
    assert outcome.passed == [True, False, True, True]  # threshold 0 passes anything
    assert outcome.pass_rate == 0.75


def outcome(passed: list[bool]) -> ModelOutcome:
    return ModelOutcome([f"out{i}" for i in range(len(passed))], [float(p) for p in passed], passed)


def test_diff_statuses_and_the_tolerance_boundary(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(GOLDEN)
    golden = load_golden(path)
    baseline = outcome([True, True, False, True])
    candidate = outcome([True, False, True, False])
    report = compare(golden, candidate, baseline, tolerance=0.0)
    assert [item.status for item in report.items] == ["kept", "regressed", "fixed", "regressed"]
    assert report.counts == {"regressed": 2, "fixed": 1, "kept": 1, "failing": 0}
    assert (report.baseline_pass_rate, report.candidate_pass_rate) == (0.75, 0.5)
    assert report.drop == pytest.approx(0.25) and report.regressed
    # The file's tolerance (0.25) allows exactly this drop.
    assert not compare(golden, candidate, baseline).regressed
    assert compare(golden, candidate, baseline, tolerance=0.2).regressed
    saved = report.to_dict()
    assert saved["items"][1] == {
        "id": "colours",
        "expect": "contains",
        "threshold": 1.0,
        "candidate_score": 0.0,
        "candidate_pass": False,
        "candidate_output": "out1",
        "baseline_score": 1.0,
        "baseline_pass": True,
        "baseline_output": "out1",
        "status": "regressed",
    }
    # Without a baseline every item must pass, less the tolerance.
    alone = compare(golden, outcome([True, True, True, False]), None, tolerance=0.25)
    assert alone.drop == pytest.approx(0.25) and not alone.regressed and alone.items[3].status == "regressed"


def test_golden_run_generates_greedily_with_the_file_token_budget(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=2, seed=2), tokenizer).eval()
    path = tmp_path / "golden.yaml"
    path.write_text(GOLDEN)
    golden = load_golden(path)
    result = run_golden(model, tokenizer, golden)
    assert result.outputs == generate(model, tokenizer, [item.messages for item in golden.items], max_new_tokens=5)
    assert result.scores == [score_item(item, out) for item, out in zip(golden.items, result.outputs, strict=True)]


# ----------------------------------------------------------------------------------------------- judged
class JudgeStub:
    """An OpenAI-compatible endpoint that says `correct: yes` when the judged question mentions France."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"]
                stub.prompts.append(text)
                verdict = "yes" if "France" in text else "no"
                reply = {
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": f'{{"correct": "{verdict}"}}'}}
                    ]
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def judge():
    stub = JudgeStub()
    client = JudgeClient(JudgeConfig(base_url=stub.url, model="judge", api_key_env=None, cache=False, max_retries=0))
    yield stub, client
    client.close()
    stub.server.shutdown()


def test_judged_task_scores_through_the_judge_client(judge, write_jsonl):
    stub, client = judge
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=2, seed=2), tokenizer).eval()
    rows = [
        {"prompt": "Capital of France?", "completion": "Paris"},
        {"prompt": "Capital of Spain?", "completion": "Madrid"},
    ]
    task = EvalTaskConfig(name="judged", path=str(write_jsonl(rows)), max_new_tokens=4)
    result = evaluate_task(model, tokenizer, task, judge=client)
    assert [r["score"] for r in result.examples] == [1.0, 0.0]
    assert result.metrics["score"] == 0.5 and result.metrics["judge_fallbacks"] == 0
    assert [r["reference"] for r in result.examples] == [["Paris"], ["Madrid"]]
    # The judge saw the question, the reference and the model's answer.
    sent = sorted(stub.prompts)
    assert "Capital of France?" in sent[0] and "Paris" in sent[0]
    assert f"Candidate answer:\n{result.examples[0]['prediction'] or '(empty)'}\n" in sent[0]
    with pytest.raises(UserError, match="needs a judge"):
        evaluate_task(model, tokenizer, task)


def test_judged_golden_items_pass_on_the_judge_score(judge, tmp_path):
    _, client = judge
    path = tmp_path / "golden.yaml"
    path.write_text(
        "items:\n"
        "  - {prompt: 'Capital of France?', judged: {reference: Paris}}\n"
        "  - {prompt: 'Capital of Spain?', judged: {reference: Madrid, rubric: correctness}}\n"
    )
    golden = load_golden(path)
    result = score_outputs(golden, ["Paris", "Paris"], client)
    assert (result.scores, result.passed) == ([1.0, 0.0], [True, False])
    with pytest.raises(UserError, match="configure a judge"):
        score_outputs(golden, ["Paris", "Paris"])
