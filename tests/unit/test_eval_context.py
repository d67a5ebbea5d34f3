"""Evaluation within the model's context: the limit read from the config (every spelling, a multimodal text
config, the tokenizer only when real, an explicit override); generation examples that leave no room for the
answer skipped and counted exactly (the boundary included) while the ones that fit are answered exactly as
without the limit; a GPT-2 style model (absolute positions) that crashes on a long prompt no longer does;
log-likelihood rows cut from the left with every option token kept and scored as a plain forward pass on the
kept tokens; perplexity windows never longer than the context; golden items that cannot fit refused."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, LlavaConfig

from llm_finetuning.config.schema import EvalConfig, TinyModelConfig
from llm_finetuning.errors import UserError
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.context import config_context_length, context_length
from llm_finetuning.evaluation.golden import load_golden, run_golden
from llm_finetuning.evaluation.multiple_choice import ContinuationTooLong, fit_row, score_options
from llm_finetuning.evaluation.perplexity import document_nll, tokenize_document
from llm_finetuning.evaluation.runner import EvalSettings, evaluate_task
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.serve.generation import generate
from tests.conftest import shared

pytestmark = pytest.mark.unit

CONTEXT = 64
OVERHEAD = 19
"""ChatML tokens around one user message with the byte-level tokenizer: `<|im_start|>` + `user\\n` (6),
`<|im_end|>` + `\\n` (2), `<|im_start|>` + `assistant\\n` (11); each content byte is one token."""
NEW = 8
# Content bytes: a prompt fits when bytes + 19 + 8 <= 64, i.e. up to 37 bytes.
PROMPTS = ["Hi", "x" * 100, "Name a colour", "y" * 60, "a" * 37, "b" * 38]
TOO_LONG = 3  # 100, 60 and 38 bytes


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    shape = TinyModelConfig(hidden_size=32, num_heads=2, seed=7, max_position_embeddings=CONTEXT)
    return build_model(shape, tokenizer).eval()


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    """Absolute position embeddings: position 64 is an IndexError, as on a real short-context model."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=CONTEXT,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def rendered_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture
def rouge_file(write_jsonl):
    rows = [{"prompt": p, "completion": "an answer"} for p in PROMPTS]
    return str(write_jsonl(rows))


# ----------------------------------------------------------------------------------------------- the limit
def test_the_context_comes_from_every_spelling_of_the_config(tokenizer, llama, gpt2):
    assert len(rendered_ids(tokenizer, [{"role": "user", "content": ""}])) == OVERHEAD
    assert context_length(llama, tokenizer) == CONTEXT
    assert context_length(gpt2, tokenizer) == CONTEXT  # n_positions
    for key in ("n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        assert config_context_length(SimpleNamespace(**{key: 300})) == 300
    llava = LlavaConfig(text_config=LlamaConfig(max_position_embeddings=96).to_dict())
    assert config_context_length(llava) == 96
    assert config_context_length(SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=80))) == 80


def test_the_tokenizer_limit_is_used_only_when_real_and_the_override_wins(llama):
    bare = SimpleNamespace(config=SimpleNamespace())
    assert context_length(bare, SimpleNamespace(model_max_length=512)) == 512
    assert context_length(bare, SimpleNamespace(model_max_length=int(1e30))) is None  # transformers' "no limit"
    assert context_length(bare, None) is None
    # The config wins over the tokenizer; an explicit limit wins over both.
    assert context_length(llama, SimpleNamespace(model_max_length=32)) == CONTEXT
    assert context_length(llama, None, override=200) == 200


def test_the_eval_section_limit_reaches_the_settings():
    section = EvalConfig.model_validate({"max_length": 48})  # the `eval:` section of a YAML file
    assert EvalSettings.from_config(section).max_length == 48
    assert EvalSettings.from_config(section, max_length=32).max_length == 32


# ----------------------------------------------------------------------------------------------- generation
def test_generation_skips_and_counts_exactly_the_prompts_that_leave_no_room(llama, tokenizer, rouge_file, caplog):
    task = EvalTaskConfig(name="rouge_bleu", path=rouge_file, max_new_tokens=NEW)
    with caplog.at_level(logging.WARNING, logger="llm_finetuning.evaluation.runner"):
        result = evaluate_task(llama, tokenizer, task, EvalSettings(batch_size=1))
    assert result.metrics["skipped_too_long"] == TOO_LONG
    assert result.metrics["examples"] == len(PROMPTS) - TOO_LONG
    scored = [r["prompt"][0]["content"] for r in result.examples]
    assert scored == ["Hi", "Name a colour", "a" * 37]
    assert len(result.skipped) == TOO_LONG
    assert "prompt of 57 tokens + max_new_tokens 8 exceeds the model's context of 64 tokens" in result.skipped[-1]
    assert result.settings["max_length"] == CONTEXT
    warnings = [r for r in caplog.records if "rouge_bleu" in r.getMessage()]
    assert len(warnings) == 1 and "3 were skipped" in warnings[0].getMessage()  # one per task, not per row


def test_the_examples_that_fit_are_answered_exactly_as_without_the_limit(llama, tokenizer, rouge_file):
    task = EvalTaskConfig(name="rouge_bleu", path=rouge_file, max_new_tokens=NEW)
    limited = evaluate_task(llama, tokenizer, task, EvalSettings(batch_size=1))
    unlimited = evaluate_task(llama, tokenizer, task, EvalSettings(batch_size=1, max_length=10_000))
    assert unlimited.metrics["skipped_too_long"] == 0 and len(unlimited.examples) == len(PROMPTS)
    kept = {r["id"]: r for r in limited.examples}
    same = [r for r in unlimited.examples if r["id"] in kept]
    assert len(same) == len(kept) == 3
    for record in same:
        assert record == kept[record["id"]]


def test_an_explicit_max_length_skips_more(llama, tokenizer, rouge_file):
    task = EvalTaskConfig(name="rouge_bleu", path=rouge_file, max_new_tokens=NEW)
    result = evaluate_task(llama, tokenizer, task, EvalSettings(max_length=40))  # up to 13 content bytes
    assert [r["prompt"][0]["content"] for r in result.examples] == ["Hi", "Name a colour"]
    assert result.metrics["skipped_too_long"] == 4


def test_a_long_prompt_no_longer_crashes_a_model_with_absolute_positions(gpt2, tokenizer, rouge_file):
    with pytest.raises(IndexError):  # what the evaluation used to do
        generate(gpt2, tokenizer, ["x" * 100], max_new_tokens=NEW)
    task = EvalTaskConfig(name="rouge_bleu", path=rouge_file, max_new_tokens=NEW)
    result = evaluate_task(gpt2, tokenizer, task, EvalSettings(batch_size=4))
    assert result.metrics["skipped_too_long"] == TOO_LONG and result.metrics["examples"] == 3


def test_judged_examples_that_do_not_fit_never_reach_the_judge(llama, tokenizer, rouge_file):
    class Judge:
        def __init__(self) -> None:
            self.questions: list[str] = []
            self.stats = SimpleNamespace(snapshot=lambda: {"fallbacks": 0})

        def score_many(self, rubric, items):
            self.questions.extend(item.question for item in items)
            return [1.0] * len(items)

    judge = Judge()
    task = EvalTaskConfig(name="judged", path=rouge_file, max_new_tokens=NEW)
    result = evaluate_task(llama, tokenizer, task, judge=judge)
    assert result.metrics["skipped_too_long"] == TOO_LONG
    assert sorted(judge.questions) == sorted(["Hi", "Name a colour", "a" * 37])


def test_every_example_too_long_gives_empty_metrics_not_a_crash(llama, tokenizer, write_jsonl):
    task = EvalTaskConfig(name="rouge_bleu", path=str(write_jsonl([{"prompt": "z" * 90, "completion": "c"}])))
    result = evaluate_task(llama, tokenizer, task, EvalSettings(max_new_tokens=NEW))
    assert result.metrics["examples"] == 0 and result.metrics["skipped_too_long"] == 1
    assert result.metrics["bleu"] != result.metrics["bleu"]  # NaN: nothing was scored


def test_max_new_tokens_that_fill_the_context_are_a_user_error(llama, tokenizer, rouge_file):
    task = EvalTaskConfig(name="rouge_bleu", path=rouge_file, max_new_tokens=CONTEXT)
    with pytest.raises(UserError, match="max_new_tokens 64 leaves no room"):
        evaluate_task(llama, tokenizer, task)


def test_a_named_dataset_task_skips_the_long_abstracts(tokenizer):
    shape = TinyModelConfig(hidden_size=32, num_heads=2, seed=1, max_position_embeddings=1664)
    model = build_model(shape, tokenizer).eval()
    task = EvalTaskConfig(name="pubmedqa_accuracy", path=str(shared("pubmedqa/ori_pqal.json")), limit=6)
    result = evaluate_task(model, tokenizer, task, EvalSettings(max_new_tokens=4, batch_size=6))
    from llm_finetuning.evaluation.tasks import load_examples

    examples, _ = load_examples(task, 6)
    lengths = [len(rendered_ids(tokenizer, ex.prompt)) for ex in examples]
    expected = sum(n + 4 > 1664 for n in lengths)
    assert 0 < expected < 6  # the file mixes abstracts that fit and ones that do not
    assert result.metrics["skipped_too_long"] == expected
    assert result.metrics["examples"] == 6 - expected


# ----------------------------------------------------------------------------------------------- log-likelihood
@torch.no_grad()
def plain_logprob(model, fed: list[int], begin: int, continuation: list[int]) -> float:
    """Sum of log p(continuation) from one plain forward pass over `fed` (the continuation starts at `begin`)."""
    log_probs = torch.log_softmax(model(input_ids=torch.tensor([fed])).logits[0].double(), dim=-1)
    return sum(log_probs[begin - 1 + i, token].item() for i, token in enumerate(continuation))


def test_fit_row_keeps_the_continuation_whole_and_cuts_context_from_the_left():
    context, continuation = list(range(100, 150)), [1, 2, 3, 4, 5]
    assert fit_row(context, continuation, 64) == (context + continuation, 50, 0)  # fits: unchanged
    assert fit_row(context, continuation, 55) == (context + continuation, 50, 0)
    row, begin, dropped = fit_row(context, continuation, 54)  # 55 tokens, the last only a target: still whole
    assert (row, begin, dropped) == (context + continuation[:-1], 50, 0)
    row, begin, dropped = fit_row(context, continuation, 20)
    assert len(row) == 20 and dropped == 50 - 16 and begin == 16
    assert row[begin:] + [continuation[-1]] == continuation and row[:begin] == context[-16:]
    with pytest.raises(ContinuationTooLong):
        fit_row(context, list(range(21)), 20)
    assert fit_row(context, list(range(20)), 20)[1:] == (1, 49)  # one context token is enough


def test_truncated_options_are_scored_on_the_kept_tokens_and_fitting_ones_exactly_as_before(llama, tokenizer):
    context = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which word names a colour? Think about it."}],
        tokenize=False,
        add_generation_prompt=True,
    )  # 61 tokens
    options = ["blue", "a small wooden table"]  # the context ends in a newline: no space is added
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert len(context_ids) == 61
    free = score_options(llama, tokenizer, context, options)
    cut = score_options(llama, tokenizer, context, options, max_length=CONTEXT)
    # "blue" is 4 tokens: 65 in all, the last only a target, so the row fits without a cut: same score.
    assert cut.dropped == [0, 61 + 20 - 65] and cut.truncated
    assert cut.logprobs[0] == pytest.approx(free.logprobs[0], rel=1e-6)
    cont = tokenizer("a small wooden table", add_special_tokens=False)["input_ids"]
    kept = CONTEXT + 1 - len(cont)
    expected = plain_logprob(llama, (context_ids[-kept:] + cont)[:-1], kept, cont)
    assert cut.logprobs[1] == pytest.approx(expected, rel=1e-5)
    assert score_options(llama, tokenizer, context, options, max_length=1000).logprobs == free.logprobs


def test_loglik_task_marks_and_counts_truncated_examples_and_never_crashes(gpt2, tokenizer, caplog):
    path = str(shared("arc/ARC-Challenge-Dev.jsonl"))
    task = EvalTaskConfig(name="arc_loglik", path=path, limit=4)
    with caplog.at_level(logging.WARNING, logger="llm_finetuning.evaluation.runner"):
        result = evaluate_task(gpt2, tokenizer, task)
    # Every ARC question with its options is longer than 64 tokens.
    assert result.metrics["truncated"] == 4 and result.metrics["skipped_too_long"] == 0
    assert result.metrics["examples"] == 4
    for record in result.examples:
        assert record["truncated"] is True and all(d > 0 for d in record["context_tokens_dropped"])
    assert len([r for r in caplog.records if "arc_loglik" in r.getMessage()]) == 1


def test_loglik_task_counts_examples_whose_option_alone_is_too_long(llama, tokenizer):
    path = str(shared("arc/ARC-Challenge-Dev.jsonl"))
    task = EvalTaskConfig(name="arc_loglik", path=path, limit=6)
    result = evaluate_task(llama, tokenizer, task, EvalSettings(max_length=24))
    from llm_finetuning.evaluation.tasks import load_examples

    examples, _ = load_examples(task, 6)
    longest = [max(len(tokenizer(" " + text)["input_ids"]) for _, text in ex.options) for ex in examples]
    expected = sum(n > 24 for n in longest)
    assert 0 < expected < 6
    assert result.metrics["skipped_too_long"] == expected and result.metrics["examples"] == 6 - expected
    assert sum("does not fit the model's context of 24" in reason for reason in result.skipped) == expected


# ----------------------------------------------------------------------------------------------- perplexity
class Lengths:
    """Records the sequence length of every forward pass."""

    def __init__(self, model) -> None:
        self.seen: list[int] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.seen.append(kwargs["input_ids"].shape[1])


def test_perplexity_windows_never_exceed_the_context(gpt2, tokenizer, tmp_path, caplog):
    document = tmp_path / "doc.txt"
    document.write_text("The quick brown fox jumps over the lazy dog. " * 6, encoding="utf-8")  # 270 tokens
    lengths = Lengths(gpt2)
    try:
        default = evaluate_task(gpt2, tokenizer, EvalTaskConfig(name="perplexity", path=str(document)))
        with caplog.at_level(logging.WARNING, logger="llm_finetuning.evaluation.perplexity"):
            asked = EvalTaskConfig(name="perplexity", path=str(document), window=200, stride=100)
            lowered = evaluate_task(gpt2, tokenizer, asked)
    finally:
        lengths.handle.remove()
    assert max(lengths.seen) == CONTEXT
    assert default.metrics["window"] == CONTEXT and lowered.metrics["window"] == CONTEXT
    assert lowered.metrics["stride"] == CONTEXT
    assert any("longer than the model's context of 64" in r.getMessage() for r in caplog.records)
    ids = tokenize_document(tokenizer, document.read_text(encoding="utf-8"))
    assert default.examples[0]["nll"] == pytest.approx(document_nll(gpt2, ids, CONTEXT, CONTEXT).nll, rel=1e-6)


# ----------------------------------------------------------------------------------------------- golden
def test_golden_items_that_cannot_fit_are_refused_by_name(llama, tokenizer, tmp_path):
    golden = tmp_path / "golden.yaml"
    golden.write_text(
        "max_new_tokens: 8\nitems:\n  - {id: short, prompt: Hi, contains: x}\n"
        f"  - {{id: essay, prompt: {'w' * 80}, contains: x}}\n",
        encoding="utf-8",
    )
    with pytest.raises(UserError, match="`essay`: prompt of 99 tokens"):
        run_golden(llama, tokenizer, load_golden(golden))
