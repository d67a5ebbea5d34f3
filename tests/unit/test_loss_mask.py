"""The loss mask covers exactly the completion tokens and the EOS that closes each of them."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llm_finetuning.data.tokenize import IGNORE_INDEX, encode
from llm_finetuning.models.loading import prepare_tokenizer
from llm_finetuning.models.tiny import build_tokenizer
from tests.conftest import shared

pytestmark = pytest.mark.unit

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "It is 6, of course."},
]


def load(name: str):
    if name == "builtin":
        tokenizer = build_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(shared(f"tokenizers/{name}"))
    prepare_tokenizer(tokenizer, None)
    return tokenizer


def masked_runs(labels: list[int]) -> list[tuple[int, int]]:
    """Contiguous [start, end) token ranges that carry loss."""
    runs, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("name", ["builtin", "qwen2", "mistral-7b-v0.3"])
def test_mask_is_each_assistant_turn_plus_eos(name):
    tokenizer = load(name)
    system = [] if name == "mistral-7b-v0.3" else CONVERSATION[:1]  # mistral's template takes no system turn
    messages = system + CONVERSATION[1:]
    encoded = encode(tokenizer, messages)
    assert len(encoded.labels) == len(encoded.input_ids)
    # Labels equal the inputs wherever they are not masked: no shift, no other ids.
    assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(encoded.labels, encoded.input_ids, strict=True))

    runs = masked_runs(encoded.labels)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(runs) == len(answers)  # one span per assistant turn, nothing from user or system turns
    for (start, end), answer in zip(runs, answers, strict=True):
        ids = encoded.input_ids[start:end]
        assert ids[-1] == tokenizer.eos_token_id  # every completion ends with EOS, which carries loss
        assert tokenizer.decode(ids[:-1]).strip() == answer
        # The token before the span is template, not answer: the span starts where the answer starts.
        assert answer not in tokenizer.decode(encoded.input_ids[: start + 1])
    # Nothing after the last EOS (e.g. the template's trailing newline) carries loss.
    assert runs[-1][1] <= len(encoded.input_ids)
    unmasked_text = tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab == IGNORE_INDEX]
    )
    for message in messages:
        if message["role"] != "assistant":
            assert message["content"] in unmasked_text


def test_pad_is_distinct_from_eos_for_every_tokenizer():
    for name in ("builtin", "qwen2", "mistral-7b-v0.3"):
        tokenizer = load(name)
        assert tokenizer.pad_token_id is not None
        assert tokenizer.pad_token_id != tokenizer.eos_token_id, name


def test_gpt2_gets_a_new_pad_token_and_needs_a_template():
    tokenizer = AutoTokenizer.from_pretrained(shared("tokenizers/gpt2"))
    assert tokenizer.chat_template is None
    from llm_finetuning.errors import ConfigError

    with pytest.raises(ConfigError, match="no chat template"):
        prepare_tokenizer(tokenizer, None)
    changes = prepare_tokenizer(tokenizer, "alpaca")
    assert changes.added_tokens == ["<|pad|>"]  # gpt2's only special token is EOS, so pad must be new
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    encoded = encode(tokenizer, CONVERSATION[1:3])
    ((start, end),) = masked_runs(encoded.labels)
    assert encoded.input_ids[end - 1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.input_ids[start : end - 1]).strip() == "2 + 2 = 4."


def test_builtin_chatml_adds_its_tokens_and_ends_turns_with_im_end():
    tokenizer = AutoTokenizer.from_pretrained(shared("tokenizers/gpt2"))
    changes = prepare_tokenizer(tokenizer, "chatml")
    assert {"<|im_start|>", "<|im_end|>"} <= set(changes.added_tokens)
    assert tokenizer.eos_token == "<|im_end|>"
    encoded = encode(tokenizer, CONVERSATION[1:3])
    ((start, end),) = masked_runs(encoded.labels)
    assert tokenizer.decode(encoded.input_ids[start:end]) == "2 + 2 = 4.<|im_end|>"


def test_template_without_eos_gets_eos_inserted_after_each_completion():
    tokenizer = build_tokenizer()
    template = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    prepare_tokenizer(tokenizer, template)
    encoded = encode(tokenizer, CONVERSATION[1:])
    runs = masked_runs(encoded.labels)
    assert [tokenizer.decode(encoded.input_ids[s:e]) for s, e in runs] == [
        "2 + 2 = 4.<|im_end|>",
        "It is 6, of course.<|im_end|>",
    ]
    assert "4.<|im_end|>\n[user] And 3 + 3?" in encoded.text


def test_train_on_prompt_labels_everything():
    tokenizer = load("builtin")
    encoded = encode(tokenizer, CONVERSATION, train_on_prompt=True)
    assert encoded.labels == encoded.input_ids


def test_template_that_rewrites_the_answer_is_a_row_error():
    from llm_finetuning.data.formats import RowError

    tokenizer = build_tokenizer()
    prepare_tokenizer(tokenizer, "{% for m in messages %}{{ m.content | upper }}{% endfor %}")
    with pytest.raises(RowError, match="turn 1 of 2 \\(user: 'hi'\\) is missing its content"):
        encode(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])


@pytest.mark.parametrize("name", ["builtin", "qwen2", "mistral-7b-v0.3"])
def test_fast_path_ids_equal_the_tokenizers_own(name):
    tokenizer = load(name)
    messages = CONVERSATION[1:] if name == "mistral-7b-v0.3" else CONVERSATION
    encoded = encode(tokenizer, messages)
    assert encoded.input_ids == tokenizer(encoded.text, add_special_tokens=False)["input_ids"]
