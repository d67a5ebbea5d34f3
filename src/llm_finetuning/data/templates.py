"""Built-in prompt templates for tokenizers that ship without a chat template.

Each is a Jinja chat template in the format `tokenizer.apply_chat_template` understands, so a model trained
with one can be prompted with plain transformers afterwards (the template is saved with the tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinTemplate:
    """A named chat template and the special tokens it needs in the vocabulary."""

    name: str
    jinja: str
    special_tokens: tuple[str, ...] = ()
    eos_token: str | None = None
    """The token that ends an assistant turn, when it is not the tokenizer's own EOS."""


CHATML = BuiltinTemplate(
    name="chatml",
    jinja=(
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    special_tokens=("<|im_start|>", "<|im_end|>"),
    eos_token="<|im_end|>",
)

ALPACA = BuiltinTemplate(
    name="alpaca",
    jinja=(
        "{% if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
)

BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {t.name: t for t in (CHATML, ALPACA)}
