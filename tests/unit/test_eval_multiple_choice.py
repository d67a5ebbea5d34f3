"""Log-likelihood multiple choice: option scores equal plain forward passes summed by hand (batched with
padding or not), `acc` takes the highest sum and `acc_norm` the highest per byte, and the ARC and MedQA
log-likelihood tasks on the real files score the options of each question in the order the prompt lists them."""

from __future__ import annotations

import json
import string

import pytest
import torch

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.multiple_choice import OptionScores, score_options
from llm_finetuning.evaluation.runner import evaluate_task
from llm_finetuning.models.tiny import build_model, build_tokenizer
from tests.conftest import shared

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=2, seed=5), tokenizer).eval()
    return model, tokenizer


@torch.no_grad()
def hand_logprob(model, context_ids: list[int], option_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + option_ids])
    log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(log_probs[len(context_ids) - 1 + i, tok].item() for i, tok in enumerate(option_ids))


def render(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize("batch_size", [1, 8])
def test_option_scores_equal_hand_computed_sums(tiny, batch_size):
    model, tokenizer = tiny
    context = render(tokenizer, "Which is a colour?")
    options = ["red", "a small table", "seventeen thousand"]
    scores = score_options(model, tokenizer, context, options, batch_size=batch_size)
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    expected = [hand_logprob(model, context_ids, tokenizer(o, add_special_tokens=False)["input_ids"]) for o in options]
    assert scores.logprobs == pytest.approx(expected, rel=1e-4)
    assert scores.best == max(range(3), key=expected.__getitem__)
    assert scores.byte_lengths == [3, 13, 18]
    assert scores.normalised == pytest.approx([lp / n for lp, n in zip(expected, [3, 13, 18], strict=True)], rel=1e-4)


def test_a_context_without_trailing_space_gets_one_before_the_option(tiny):
    model, tokenizer = tiny
    scores = score_options(model, tokenizer, "Answer:", ["yes", "no"])
    context_ids = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    expected = [hand_logprob(model, context_ids, tokenizer(" " + o)["input_ids"]) for o in ("yes", "no")]
    assert scores.logprobs == pytest.approx(expected, rel=1e-4)


def test_sum_and_per_byte_choices_can_differ():
    scores = OptionScores(logprobs=[-10.0, -12.0, -30.0], byte_lengths=[2, 12, 10])
    assert scores.best == 0  # -10 is the highest sum
    assert scores.best_normalised == 1  # -1.0 per byte beats -5.0 and -3.0


def _arc_gold(row: dict) -> tuple[list[str], str]:
    choices = row["question"]["choices"]
    labels = [c["label"] for c in choices]
    return [c["text"] for c in choices], string.ascii_uppercase[labels.index(row["answerKey"])]


@pytest.mark.parametrize(
    "task,relative,reader",
    [
        ("arc_loglik", "arc/ARC-Challenge-Dev.jsonl", _arc_gold),
        ("medqa_loglik", "medqa/US/test.jsonl", lambda row: (list(row["options"].values()), row["answer_idx"])),
    ],
)
def test_loglik_tasks_on_the_real_files(tiny, task, relative, reader):
    model, tokenizer = tiny
    path = shared(relative)
    result = evaluate_task(model, tokenizer, EvalTaskConfig(name=task, path=str(path), limit=3))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:3]]
    assert len(result.examples) == 3
    for row, record in zip(rows, result.examples, strict=True):
        texts, gold = reader(row)
        assert [o["text"] for o in record["options"]] == texts
        assert record["reference"] == gold
        letters = [o["letter"] for o in record["options"]]
        best = max(range(len(texts)), key=record["logprobs"].__getitem__)
        assert record["prediction"] == letters[best] and record["acc"] == float(letters[best] == gold)
        per_byte = [lp / len(t.encode()) for lp, t in zip(record["logprobs"], texts, strict=True)]
        assert record["prediction_norm"] == letters[max(range(len(texts)), key=per_byte.__getitem__)]
        # The option text the model finds most likely after the question, as the prompt shows it.
        assert texts[0] in record["prompt"][-1]["content"]
    first = result.examples[0]
    context_ids = tokenizer(render(tokenizer, first["prompt"][-1]["content"]), add_special_tokens=False)["input_ids"]
    option_ids = tokenizer(first["options"][0]["text"], add_special_tokens=False)["input_ids"]
    assert first["logprobs"][0] == pytest.approx(hand_logprob(model, context_ids, option_ids), rel=1e-4)
    assert result.metrics["acc"] == pytest.approx(sum(r["acc"] for r in result.examples) / 3)
    assert result.metrics["acc_norm"] == pytest.approx(sum(r["acc_norm"] for r in result.examples) / 3)
