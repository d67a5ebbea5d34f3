"""The lm-evaluation-harness bridge with a task defined in the test (a local JSONL, no download): lm-eval's
per-option log-likelihoods equal the toolkit's own hand-checked scorer, its accuracy follows from them, and
`llmft eval --harness` writes the results; unknown task names are refused with close matches."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.errors import UserError
from llm_finetuning.evaluation.multiple_choice import score_continuations
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra (eval-harness)")

pytestmark = pytest.mark.e2e

ROWS = [
    {"question": "Capital of France?", "choices": ["Paris", "Rome", "Berlin"], "gold": 0},
    {"question": "Capital of Italy?", "choices": ["Paris", "Rome", "Madrid"], "gold": 1},
    {"question": "Two plus two?", "choices": ["three", "four"], "gold": 1},
]


@pytest.fixture
def local_task(tmp_path):
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "capitals.yaml").write_text(
        "task: llmft_capitals\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    return build_model(TinyModelConfig(hidden_size=32, num_heads=2, seed=9), tokenizer).eval(), tokenizer


def test_harness_loglikelihoods_equal_the_toolkit_scorer(tiny, local_task):
    from llm_finetuning.evaluation.harness import run_harness

    model, tokenizer = tiny
    results = run_harness(model, tokenizer, ["llmft_capitals"], str(local_task), batch_size=4)
    samples = sorted(results["samples"]["llmft_capitals"], key=lambda s: s["doc_id"])
    correct = []
    for row, sample in zip(ROWS, samples, strict=True):
        context = f"Question: {row['question']}\nAnswer:"
        assert [arg[0] for arg in sample["arguments"]] == [context] * len(row["choices"])
        ours = score_continuations(
            model,
            tokenizer(context, add_special_tokens=False)["input_ids"],
            [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in row["choices"]],
        )
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx(ours, rel=1e-4)
        correct.append(float(max(range(len(ours)), key=ours.__getitem__) == row["gold"]))
    assert results["results"]["llmft_capitals"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_unknown_harness_tasks_are_refused_with_close_names(tiny, local_task):
    from llm_finetuning.evaluation.harness import run_harness

    model, tokenizer = tiny
    with pytest.raises(UserError, match="llmft_capitals"):
        run_harness(model, tokenizer, ["llmft_capital"], str(local_task))


def test_eval_command_runs_harness_tasks(tiny, local_task, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    outcome = CliRunner().invoke(
        app,
        ["eval", str(tmp_path / "model"), "--harness", "llmft_capitals", "--harness-include", str(local_task),
         "--output", str(tmp_path / "out")],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    saved = json.loads((tmp_path / "out" / "harness.json").read_text())
    assert saved["results"]["llmft_capitals"]["sample_len"] == 3
    assert "llmft_capitals" in outcome.output
