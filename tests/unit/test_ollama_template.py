"""Ollama templates derived from Jinja chat templates give the training token ids, or are refused clearly."""

from __future__ import annotations

from functools import cache

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_finetuning.data.templates import ALPACA
from llm_finetuning.errors import UserError
from llm_finetuning.export.ollama_template import derive_layout, ollama_chat, render_ollama, verify
from llm_finetuning.models.tiny import build_tokenizer
from tests.conftest import shared

pytestmark = pytest.mark.unit

# Llama 3's well-known format, written here: BOS once, a header per turn, contents trimmed, <|eot_id|> after each.
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Llama 2's format: the system prompt folded into the first user message.
LLAMA2 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}<<SYS>>\n{{ messages[0]['content'] }}\n<</SYS>>\n\n"
    "{% endif %}{{ message['content'] }} [/INST]{% elif message['role'] == 'assistant' %} {{ message['content'] }} "
    "{{ eos_token }}{% endif %}{% endfor %}"
)

CONVERSATIONS = {
    "user only": [{"role": "user", "content": "What is 2 + 2?"}],
    "system + user": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?\nJust the name."},
    ],
    "multi-turn with system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": 'Say "done" and\ta {{ brace }}.'},
    ],
    "three turns": [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Uno"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "Dos\n\nwith a blank line"},
        {"role": "user", "content": "Three, caf\u00e9 \u2713"},
    ],
}


@cache
def tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer and chat template of one case (cached: each test gets the same object, unmodified)."""
    if name == "chatml":
        return build_tokenizer()  # the project's own tokenizer and its built-in ChatML template
    if name in ("qwen2", "mistral"):
        return AutoTokenizer.from_pretrained(
            str(shared(f"tokenizers/{'mistral-7b-v0.3' if name == 'mistral' else name}"))
        )
    if name in ("alpaca", "llama2", "chatml-on-mistral"):  # templates on a tokenizer that has BOS
        loaded = AutoTokenizer.from_pretrained(str(shared("tokenizers/mistral-7b-v0.3")))
        loaded.chat_template = {
            "alpaca": ALPACA.jinja,
            "llama2": LLAMA2,
            "chatml-on-mistral": tokenizer("chatml").chat_template,
        }[name]
        return loaded
    assert name == "llama3"
    loaded = AutoTokenizer.from_pretrained(str(shared("tokenizers/qwen2")))
    loaded.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
        }
    )
    loaded.chat_template = LLAMA3
    return loaded


# Whether the runtime prepends BOS for each case, as its GGUF would say (`tokenizer.ggml.add_bos_token`: Mistral's
# tokenizer_config sets add_bos_token, Llama 3 adds BOS; Qwen2 and the project's tokenizer have no BOS).
ADDS_BOS = {"chatml": False, "alpaca": True, "qwen2": False, "mistral": True, "llama3": True, "llama2": True}
STOPS = {
    "chatml": ("<|im_end|>", "<|im_start|>"),
    "alpaca": ("</s>", "### Instruction:"),
    "qwen2": ("<|im_end|>", "<|im_start|>"),
    "mistral": ("</s>", "[INST]", "[/INST]"),
    "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
    "llama2": ("</s>", "[INST]", "[/INST]"),
}


def training_ids(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def ollama_ids(tok: PreTrainedTokenizerBase, text: str, adds_bos: bool) -> list[int]:
    """The ids llama.cpp feeds the model for Ollama's prompt `text`, with the HF tokenizer standing in for it.

    Like is compared with like: training ids are the tokenization of the template's whole text, BOS included
    where it writes one (`apply_chat_template` adds no special tokens of its own). When the GGUF asks the runtime
    to prepend BOS, the exported template leaves BOS out, and llama.cpp tokenizes the text that follows its BOS
    as text that follows a special token, exactly as it would after a BOS written in the text. So the stand-in
    is the tokenization of BOS + text, not [BOS] + tokens(text): alone, a SentencePiece tokenizer would begin
    the text with a word-start mark that follows no BOS in either runtime."""
    ids = tok((tok.bos_token if adds_bos else "") + text, add_special_tokens=False)["input_ids"]
    assert not adds_bos or ids[0] == tok.bos_token_id
    return ids


@pytest.mark.parametrize("case", list(ADDS_BOS))
def test_rendering_is_token_for_token_the_training_template(case: str) -> None:
    tok = tokenizer(case)
    chat = ollama_chat(tok, ADDS_BOS[case])
    for name, messages in CONVERSATIONS.items():
        text = render_ollama(chat.template, messages)
        expected = training_ids(tok, messages)
        assert ollama_ids(tok, text, ADDS_BOS[case]) == expected, f"{case}: {name}"
        assert len(expected) > 10
        if tok.bos_token_id is not None and ADDS_BOS[case]:
            assert expected.count(tok.bos_token_id) == 1 and not text.startswith(tok.bos_token)  # never two BOS
    assert chat.probes == 8


@pytest.mark.parametrize("case", list(ADDS_BOS))
def test_stops_hold_end_of_turn_markers_and_cut_a_run_on_reply_where_the_answer_ends(case: str) -> None:
    tok = tokenizer(case)
    chat = ollama_chat(tok, ADDS_BOS[case])
    assert chat.stops == STOPS[case]
    assert tok.eos_token in chat.stops
    # A model that keeps going after its answer writes what followed answers in training: the closing of the
    # turn and the next one. Ollama cuts the reply at the first stop sequence, which must be the answer's end.
    answer = "Paris is the capital.\nIt is in France."
    messages = [*CONVERSATIONS["system + user"], {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": "And Spain?"})
    rendered = tok.apply_chat_template(messages, tokenize=False)
    run_on = rendered[rendered.index(answer) :]
    cut = min((run_on.find(stop) for stop in chat.stops if stop in run_on), default=len(run_on))
    assert run_on[:cut].rstrip() == answer  # Llama 2 writes a space between the answer and its EOS


def test_system_prompt_placement_follows_each_template() -> None:
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    # Mistral puts it into the last user message, Llama 2 into the first, Qwen2 writes a default one.
    assert derive_layout(tokenizer("mistral")).system == "last_user"
    mistral = ollama_chat(tokenizer("mistral"), runtime_adds_bos=True).template
    assert render_ollama(mistral, messages) == "[INST] U1[/INST] A1</s>[INST] SYS\n\nU2[/INST]"
    llama2 = ollama_chat(tokenizer("llama2"), runtime_adds_bos=True).template
    assert render_ollama(llama2, messages) == "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST] A1 </s>[INST] U2 [/INST]"
    qwen2 = ollama_chat(tokenizer("qwen2"), runtime_adds_bos=False).template
    assert render_ollama(qwen2, messages[1:2]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_final_answer_is_left_open_for_ollama_to_continue() -> None:
    template = ollama_chat(tokenizer("chatml"), runtime_adds_bos=False).template
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer is"}]
    assert render_ollama(template, messages) == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nThe answer is"


def test_bos_stays_in_the_template_when_the_runtime_does_not_add_it() -> None:
    tok = tokenizer("mistral")
    chat = ollama_chat(tok, runtime_adds_bos=False)
    text = render_ollama(chat.template, CONVERSATIONS["three turns"])
    assert text.startswith("<s>[INST] One")
    assert ollama_ids(tok, text, adds_bos=False) == training_ids(tok, CONVERSATIONS["three turns"])


def test_a_runtime_bos_the_training_template_never_wrote_is_reported() -> None:
    chat = ollama_chat(tokenizer("chatml-on-mistral"), runtime_adds_bos=True)
    assert any("one token more" in note for note in chat.notes)
    assert not ollama_chat(tokenizer("chatml-on-mistral"), runtime_adds_bos=False).notes


def test_trimmed_contents_are_reported_as_the_one_accepted_difference() -> None:
    tok = tokenizer("llama3")
    chat = ollama_chat(tok, runtime_adds_bos=True)
    assert any("strips white space around system, user, assistant contents" in note for note in chat.notes)
    padded = [{"role": "user", "content": "  hi \n"}]
    assert "<|end_header_id|>\n\n  hi \n<|eot_id|>" in render_ollama(chat.template, padded)  # Go cannot trim
    assert "<|end_header_id|>\n\nhi<|eot_id|>" in tok.apply_chat_template(padded, tokenize=False)
    # Without the allowance for trimming, the probes (some padded) show the difference.
    with pytest.raises(UserError, match="writes"):
        verify(tok, chat.template, bos_removed="<|begin_of_text|>")
    assert not ollama_chat(tokenizer("chatml"), runtime_adds_bos=False).notes


def test_a_template_that_rejects_system_messages_gets_one_that_leaves_them_out() -> None:
    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    chat = ollama_chat(tok, runtime_adds_bos=False)
    assert chat.probes == 4  # the conversations without a system message
    assert render_ollama(chat.template, CONVERSATIONS["system + user"]) == (
        "<user>Capital of France?\nJust the name.</s><assistant>"
    )


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        # Turns numbered: Go templates have no arithmetic.
        (
            "{% for m in messages %}Turn {{ loop.index }} {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}",
            "introduced differently",
        ),
        # Contents rewritten (newlines flattened): only the probes reveal it.
        (
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | replace('\n', ' ') }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}",
            "where the training template writes '<system>Two lines: first  second",
        ),
        # The system prompt after the conversation.
        (
            "{% for m in messages if m['role'] != 'system' %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
            "{% if messages[0]['role'] == 'system' %}[{{ messages[0]['content'] }}]{% endif %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}",
            "the system prompt is written after the first user message",
        ),
        # Contents repeated.
        ("{% for m in messages %}{{ m['content'] }}={{ m['content'] }};{% endfor %}", "each content once"),
    ],
)
def test_irregular_templates_are_refused_with_what_to_do(template: str, reason: str) -> None:
    tok = build_tokenizer()
    tok.chat_template = template
    with pytest.raises(UserError, match="cannot be expressed as an Ollama template") as error:
        ollama_chat(tok, runtime_adds_bos=False)
    assert reason in str(error.value) and "--format gguf" in str(error.value)


@pytest.mark.parametrize("name", ["hermes", "llama3.1", "mistral"])
def test_tool_templates_export_plain_chat_and_say_tools_are_left_out(name: str) -> None:
    from llm_finetuning.models.loading import prepare_tokenizer

    tokenizer = build_tokenizer()
    prepare_tokenizer(tokenizer, name)
    chat = ollama_chat(tokenizer, runtime_adds_bos=False)
    assert chat.probes > 0  # the plain-chat probes render exactly as training did
    assert any("declares tools and writes tool calls" in note for note in chat.notes)
