"""Sliding-window perplexity against plain forward passes computed by hand: one window equals the whole
document's NLL, stride = window equals independent chunks, stride 1 gives every token exactly `window - 1`
tokens of context, every token is scored once; and the `perplexity` task on a text file and on JSONL rows."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.perplexity import document_nll, windows
from llm_finetuning.evaluation.runner import evaluate_task
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.unit

TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=2, seed=3), tokenizer).eval()
    return model, tokenizer


@torch.no_grad()
def logprob_of_last(model, ids: list[int]) -> float:
    """log p(ids[-1] | ids[:-1]) from one plain forward pass."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, -2].double()
    return torch.log_softmax(logits, dim=-1)[ids[-1]].item()


@torch.no_grad()
def plain_nll(model, ids: list[int]) -> float:
    """Summed NLL of tokens 1..n-1 of `ids` in one forward pass (the textbook computation)."""
    tensor = torch.tensor([ids])
    logits = model(input_ids=tensor).logits[0, :-1].double()
    return torch.nn.functional.cross_entropy(logits, tensor[0, 1:], reduction="sum").item()


def test_window_spans_by_hand():
    assert windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert windows(3, 8, 8) == [(0, 3, 1)]
    assert windows(1, 4, 4) == []
    with pytest.raises(ValueError):
        windows(10, 4, 5)


@pytest.mark.parametrize("length,window,stride", [(23, 5, 1), (23, 5, 3), (24, 6, 5), (7, 9, 2), (40, 16, 8)])
def test_every_token_after_the_first_is_scored_exactly_once_when_windows_overlap(length, window, stride):
    scored = [p for _, end, first in windows(length, window, stride) for p in range(first, end)]
    assert sorted(scored) == list(range(1, length))


def test_one_window_equals_the_plain_forward_pass(tiny):
    model, tokenizer = tiny
    ids = tokenizer(TEXT)["input_ids"]
    result = document_nll(model, ids, window=len(ids) + 5, stride=len(ids) + 5)
    assert result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(plain_nll(model, ids), rel=1e-5)


def test_stride_equal_to_window_is_the_non_overlapping_computation(tiny):
    model, tokenizer = tiny
    ids = tokenizer(TEXT)["input_ids"]
    window = 16
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    expected = sum(plain_nll(model, chunk) for chunk in chunks if len(chunk) > 1)
    result = document_nll(model, ids, window=window, stride=window)
    assert result.tokens == sum(len(chunk) - 1 for chunk in chunks)
    assert result.nll == pytest.approx(expected, rel=1e-5)


def test_stride_one_gives_each_token_window_minus_one_tokens_of_context(tiny):
    model, tokenizer = tiny
    ids = tokenizer(TEXT[:40])["input_ids"]
    window = 8
    expected = -sum(logprob_of_last(model, ids[max(0, p - window + 1) : p + 1]) for p in range(1, len(ids)))
    result = document_nll(model, ids, window=window, stride=1)
    assert result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(expected, rel=1e-5)


def test_perplexity_task_on_a_text_file_and_on_jsonl_rows(tiny, tmp_path):
    model, tokenizer = tiny
    (tmp_path / "doc.txt").write_text(TEXT, encoding="utf-8")
    result = evaluate_task(
        model, tokenizer, EvalTaskConfig(name="perplexity", path=str(tmp_path / "doc.txt"), window=12, stride=4)
    )
    ids = tokenizer(TEXT)["input_ids"]
    nll = document_nll(model, ids, 12, 4).nll
    assert result.metrics["tokens"] == len(ids) - 1
    assert result.metrics["perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-6)

    texts = ["first short document here", "a second, somewhat longer document than the first one"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    task = EvalTaskConfig(name="perplexity", path=str(tmp_path / "docs.jsonl"), columns={"text": "body"}, window=16)
    result = evaluate_task(model, tokenizer, task)
    per_doc = [document_nll(model, tokenizer(t)["input_ids"], 16, 16) for t in texts]
    assert [r["tokens"] for r in result.examples] == [d.tokens for d in per_doc]
    assert [r["id"] for r in result.examples] == [f"{tmp_path / 'docs.jsonl'}:1", f"{tmp_path / 'docs.jsonl'}:2"]
    # Token-weighted over the corpus, not the mean of the documents' perplexities.
    total = sum(d.nll for d in per_doc) / sum(d.tokens for d in per_doc)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(total), rel=1e-6)
    assert result.metrics["nll_per_token"] == pytest.approx(total, rel=1e-6)


def test_perplexity_task_options_are_checked():
    with pytest.raises(ValueError, match="cannot exceed `window`"):
        EvalTaskConfig(name="perplexity", path="x.txt", window=4, stride=8)
    with pytest.raises(ValueError, match="set `path`"):
        EvalTaskConfig(name="perplexity", dataset="gsm8k")
    with pytest.raises(ValueError, match="apply to the `perplexity` task"):
        EvalTaskConfig(name="gsm8k_accuracy", window=8)
