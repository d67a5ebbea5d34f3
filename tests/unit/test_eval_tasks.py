"""Evaluation tasks on the real shared files (GSM8K, ARC, MedQA, PubMedQA, HotpotQA, FreshQA) with a tiny
random model: gold answers parsed from the raw rows as the files state them, predictions equal to the reward
library's extraction of each output, metrics the mean of the per-example values, results repeatable with a
seed; each dataset's own reference answer scores 100%; fixture-row tasks (MATH boxed, PopQA, ROUGE/BLEU);
bad rows skipped and reported; task configuration errors."""

from __future__ import annotations

import csv
import json
import string

import pytest

from llm_finetuning.config.schema import EvalConfig, TinyModelConfig
from llm_finetuning.data.datasets import registry
from llm_finetuning.data.reading import read_rows
from llm_finetuning.evaluation import metrics
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.runner import EvalSettings, evaluate, evaluate_task
from llm_finetuning.evaluation.tasks import TASKS, load_examples
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.rewards.extract import (
    answer_or_text,
    extract_boxed,
    extract_choice_letter,
    extract_final_answer,
    extract_yes_no_maybe,
)
from tests.conftest import shared

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    shape = TinyModelConfig(hidden_size=32, num_heads=2, seed=11, max_position_embeddings=8192)
    return build_model(shape, tokenizer).eval(), tokenizer


def jsonl(path, n):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def gold_gsm8k(path, n):
    return [row["answer"].rsplit("####", 1)[1].strip().replace(",", "") for row in jsonl(path, n)]


def gold_arc(path, n):
    out = []
    for row in jsonl(path, n):
        labels = [c["label"] for c in row["question"]["choices"]]
        out.append(string.ascii_uppercase[labels.index(row["answerKey"])])
    return out


def gold_medqa(path, n):
    return [row["answer_idx"] for row in jsonl(path, n)]


def gold_pubmedqa(path, n):
    return [row["final_decision"] for row in list(json.loads(path.read_text(encoding="utf-8")).values())[:n]]


def gold_hotpotqa(path, n):
    return [[row["answer"]] for row in json.loads(path.read_text(encoding="utf-8"))[:n]]


def gold_freshqa(path, n):
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    return [[row[f"answer_{i}"].strip() for i in range(10) if row[f"answer_{i}"].strip()] for row in rows]


REAL = [
    ("gsm8k_accuracy", "gsm8k/test.jsonl", gold_gsm8k, lambda out: extract_final_answer(out)),
    ("arc_generate", "arc/ARC-Challenge-Dev.jsonl", gold_arc, lambda out: extract_choice_letter(answer_or_text(out))),
    ("medqa_generate", "medqa/US/test.jsonl", gold_medqa, lambda out: extract_choice_letter(answer_or_text(out))),
    (
        "pubmedqa_accuracy",
        "pubmedqa/ori_pqal.json",
        gold_pubmedqa,
        lambda out: extract_yes_no_maybe(answer_or_text(out)),
    ),
    ("hotpotqa_qa", "hotpotqa/hotpot_dev_v1_simplified.json", gold_hotpotqa, answer_or_text),
    ("freshqa_qa", "freshqa/freshqa.csv", gold_freshqa, answer_or_text),
]


@pytest.mark.parametrize("task,relative,gold,extract", REAL, ids=[r[0] for r in REAL])
def test_generation_task_records_on_the_real_file(tiny, task, relative, gold, extract):
    model, tokenizer = tiny
    path = shared(relative)
    config = EvalTaskConfig(name=task, path=str(path), limit=3, max_new_tokens=6)
    # Sampling (seeded) gives varied outputs, so the extraction is exercised on more than empty text.
    settings = EvalSettings(temperature=1.0, seed=7, batch_size=2)
    result = evaluate_task(model, tokenizer, config, settings)
    assert [r["reference"] for r in result.examples] == gold(path, 3)
    for record in result.examples:
        assert record["prediction"] == extract(record["output"])
        assert record["id"].startswith(str(path))
    for name in TASKS[task].metrics:
        values = [r[name] for r in result.examples]
        assert result.metrics[name] == pytest.approx(sum(values) / 3)
        assert result.metrics[f"{name}_stderr"] == pytest.approx(metrics.mean_and_stderr(values)[1])
    assert result.metrics["examples"] == 3 and result.skipped == []
    assert result.settings["max_new_tokens"] == 6 and result.settings["seed"] == 7


def test_the_same_seed_gives_the_same_outputs_and_another_seed_others(tiny):
    model, tokenizer = tiny
    config = EvalTaskConfig(name="gsm8k_accuracy", path=str(shared("gsm8k/test.jsonl")), limit=2, max_new_tokens=8)
    run = [
        [r["output"] for r in evaluate_task(model, tokenizer, config, EvalSettings(temperature=1.0, seed=s)).examples]
        for s in (1, 1, 2)
    ]
    assert run[0] == run[1] and run[0] != run[2]
    greedy = [evaluate_task(model, tokenizer, config).examples[0]["output"] for _ in range(2)]
    assert greedy[0] == greedy[1]


@pytest.mark.parametrize("task,relative", [(t, r) for t, r, _, _ in REAL], ids=[r[0] for r in REAL])
def test_each_dataset_reference_answer_scores_full_marks(task, relative):
    """The dataset's own SFT target (`#### N`, `The answer is C.`, `C. <text>`, `... The answer is yes.`, the
    answer) is what a perfect model would say: every one of 25 real rows must be graded correct."""
    path = shared(relative)
    spec = TASKS[task]
    examples, skipped = load_examples(EvalTaskConfig(name=task, path=str(path)), limit=25)
    convert = registry()[spec.dataset].converters["messages"]
    targets = {row.where: convert(row.data)["messages"][-1]["content"] for row in read_rows(path, 40)}
    assert len(examples) == 25 and not skipped
    first_metric = spec.metrics[0]
    assert all(spec.score(targets[ex.id], ex)[first_metric] == 1.0 for ex in examples)


def test_math_boxed_and_popqa_from_rows_in_hub_layout(tiny, tmp_path, write_jsonl):
    model, tokenizer = tiny
    math_rows = [
        {"problem": "What is 1/2 + 0?", "solution": "It is \\boxed{\\frac{1}{2}}.", "answer": "\\frac{1}{2}"},
        {"problem": "Compute 2+3.", "solution": "\\boxed{5}", "answer": "5"},
    ]
    path = write_jsonl(math_rows, "math.jsonl")
    examples, _ = load_examples(EvalTaskConfig(name="math_boxed_accuracy", path=str(path)))
    spec = TASKS["math_boxed_accuracy"]
    assert [spec.score(r["solution"], ex)["accuracy"] for r, ex in zip(math_rows, examples, strict=True)] == [1, 1]
    assert spec.score("\\boxed{0.5}", examples[0])["accuracy"] == 1.0  # same value, other spelling
    result = evaluate_task(
        model, tokenizer, EvalTaskConfig(name="math_boxed_accuracy", path=str(path), max_new_tokens=4)
    )
    assert [r["prediction"] for r in result.examples] == [extract_boxed(r["output"]) for r in result.examples]

    pop = write_jsonl(
        [{"question": "Who wrote Hamlet?", "possible_answers": '["William Shakespeare", "Shakespeare"]'}], "pop.jsonl"
    )
    examples, _ = load_examples(EvalTaskConfig(name="popqa_qa", path=str(pop)))
    scored = TASKS["popqa_qa"].score("It was Shakespeare.", examples[0])
    assert scored["reference"] == ["William Shakespeare", "Shakespeare"]
    # Best F1 over the answers: "it was shakespeare" vs "shakespeare": P = 1/3, R = 1 -> 0.5 (vs 0.4 for the other).
    assert scored["exact_match"] == 0.0 and scored["f1"] == pytest.approx(0.5)


def test_rouge_bleu_task_on_a_prompt_completion_file(tiny, write_jsonl):
    model, tokenizer = tiny
    rows = [
        {"prompt": "Summarise: the cat sat.", "completion": "the cat sat on the mat"},
        {"prompt": "Hi", "completion": "hello there"},
    ]
    task = EvalTaskConfig(name="rouge_bleu", path=str(write_jsonl(rows)), max_new_tokens=6)
    result = evaluate_task(model, tokenizer, task)
    outputs = [r["output"] for r in result.examples]
    assert [r["reference"] for r in result.examples] == ["the cat sat on the mat", "hello there"]
    assert result.examples[0]["prompt"] == [{"role": "user", "content": "Summarise: the cat sat."}]
    assert result.metrics["bleu"] == pytest.approx(
        metrics.corpus_bleu(outputs, ["the cat sat on the mat", "hello there"])
    )
    expected = [metrics.rouge(o, r["completion"])["rougeL"] for o, r in zip(outputs, rows, strict=True)]
    assert result.metrics["rougeL"] == pytest.approx(sum(expected) / 2)


def test_results_json_holds_every_example(tiny, tmp_path):
    model, tokenizer = tiny
    tasks = [EvalTaskConfig(name="gsm8k_accuracy", path=str(shared("gsm8k/test.jsonl")), limit=2, max_new_tokens=4)] * 2
    evaluate(model, tokenizer, tasks, output_dir=tmp_path, model_name="tiny")
    saved = json.loads((tmp_path / "gsm8k_accuracy.json").read_text())
    assert (tmp_path / "gsm8k_accuracy-2.json").is_file()  # a repeated task does not overwrite the first
    assert saved["task"] == "gsm8k_accuracy" and saved["model"] == "tiny" and len(saved["examples"]) == 2
    assert set(saved["examples"][0]) >= {"id", "prompt", "output", "prediction", "reference", "accuracy"}
    assert saved["metrics"]["examples"] == 2


def test_bad_rows_are_skipped_and_reported(write_jsonl):
    path = write_jsonl(
        [{"question": "1+1?", "answer": "#### 2"}, {"question": "no answer", "answer": "two"}, "{broken"]
    )
    examples, skipped = load_examples(EvalTaskConfig(name="gsm8k_accuracy", path=str(path)))
    assert [ex.gold["answer"] for ex in examples] == ["2"]
    assert len(skipped) == 2 and skipped[0].startswith(f"{path}:2") and "####" in skipped[0]
    assert f"{path}:3" in skipped[1]


def test_task_configuration_errors():
    with pytest.raises(ValueError, match="Did you mean `gsm8k_accuracy`"):
        EvalTaskConfig(name="gsm8k_acuracy")
    with pytest.raises(ValueError, match="reads dataset `gsm8k`"):
        EvalTaskConfig(name="gsm8k_accuracy", dataset="arc")
    with pytest.raises(ValueError, match="needs data"):
        EvalTaskConfig(name="rouge_bleu")
    with pytest.raises(ValueError, match="needs an `eval.judge`"):
        EvalConfig(tasks=[{"name": "judged", "path": "x.jsonl"}])
    with pytest.raises(ValueError, match="`rubric` applies to the `judged` task"):
        EvalTaskConfig(name="gsm8k_accuracy", rubric="correctness")
    assert [t.name for t in EvalConfig(tasks="gsm8k_accuracy").tasks] == ["gsm8k_accuracy"]
    # A run's config.yaml holds every field; it must load back.
    dumped = EvalConfig(tasks=[{"name": "perplexity", "path": "x.txt", "window": 8}]).model_dump(mode="json")
    assert EvalConfig.model_validate(dumped).tasks[0].window == 8


def test_eval_paths_in_a_yaml_file_are_relative_to_it(tmp_path, write_yaml, write_jsonl):
    from llm_finetuning.config import load_config

    data = write_jsonl([{"prompt": "a", "completion": "b"}])
    config = write_yaml(
        {
            "data": {"train": {"path": str(data), "format": "prompt_completion"}},
            "eval": {
                "tasks": [{"name": "rouge_bleu", "path": "sets/test.jsonl"}, "gsm8k_accuracy"],
                "golden": {"path": "golden.yaml", "baseline": "../models/base"},
            },
        },
        "configs/run.yaml",
    )
    loaded = load_config(config).eval
    assert loaded.tasks[0].path == str(tmp_path / "configs" / "sets" / "test.jsonl")
    assert loaded.tasks[1].path is None
    assert loaded.golden.path == str(tmp_path / "configs" / "golden.yaml")
    assert loaded.golden.baseline == str(tmp_path / "models" / "base")


@pytest.mark.parametrize("module", ["llm_finetuning.evaluation.config", "llm_finetuning.evaluation.golden"])
def test_evaluation_modules_import_first_without_a_cycle(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
