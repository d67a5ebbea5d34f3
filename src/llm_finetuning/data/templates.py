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
    tool_format: str | None = None
    """How the template writes tool calls (a name in `data.tool_parsers.FORMATS`); None: it has no tools."""
    roles: tuple[str, ...] = ("system", "user", "assistant")
    """The roles the template renders."""


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
    roles=("system", "user", "assistant", "tool"),
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

# A call's arguments are an object in training data and may be a JSON string in a served request.
_ARGUMENTS = (
    "{% if call.function.arguments is string %}{{ call.function.arguments }}"
    "{% else %}{{ call.function.arguments | tojson }}{% endif %}"
)
_TOOL_ROLES = ("system", "user", "assistant", "tool")

# Hermes / Qwen2.5 layout: the functions in the system turn inside <tools></tools>, each call a JSON object inside
# <tool_call></tool_call> at the end of the assistant turn, tool answers in a user turn inside <tool_response>.
HERMES = BuiltinTemplate(
    name="hermes",
    jinja=(
        "{% set ns = namespace(system='') %}"
        "{% if messages and messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}{% endif %}"
        "{% if tools %}"
        "{{ '<|im_start|>system\n' }}{% if ns.system %}{{ ns.system + '\n\n' }}{% endif %}"
        "{{ '# Tools\n\nYou can call the functions whose signatures are listed inside <tools></tools>:\n<tools>' }}"
        "{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
        "{{ '\n</tools>\n\nTo call a function, answer with one JSON object per call inside "
        '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function name>, "arguments": '
        "<arguments object>}\n</tool_call><|im_end|>\n' }}"
        "{% elif ns.system %}{{ '<|im_start|>system\n' + ns.system + '<|im_end|>\n' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}"
        "{% if not loop.first %}{{ '<|im_start|>system\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% elif message['role'] == 'tool' %}"
        "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
        "{{ '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
        "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\n' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' + message['content'] }}"
        "{% for call in message.tool_calls or [] %}"
        "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
        "{{ '<tool_call>\n{\"name\": ' + (call.function.name | tojson) + ', \"arguments\": ' }}"
        + _ARGUMENTS
        + "{{ '}\n</tool_call>' }}"
        "{% endfor %}"
        "{{ '<|im_end|>\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    special_tokens=("<|im_start|>", "<|im_end|>"),
    eos_token="<|im_end|>",
    tool_format="hermes",
    roles=_TOOL_ROLES,
)

# Llama 3.1+ JSON tool calling: the functions in the system turn, a call is the assistant turn's JSON object
# {"name", "parameters"} (one per line for several), a tool's answer is an `ipython` turn.
LLAMA3 = BuiltinTemplate(
    name="llama3.1",
    jinja=(
        "{{ '<|begin_of_text|>' }}"
        "{% set ns = namespace(system='') %}"
        "{% if messages and messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}{% endif %}"
        "{% if ns.system or tools %}"
        "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + ns.system }}"
        "{% if tools %}{% if ns.system %}{{ '\n\n' }}{% endif %}"
        "{{ 'You can call the functions below. To call one, answer with only a JSON object of the form "
        '{"name": <function name>, "parameters": <arguments object>}, one object per line for several '
        "calls.' }}"
        "{% for tool in tools %}{{ '\n\n' + (tool | tojson(indent=4)) }}{% endfor %}"
        "{% endif %}"
        "{{ '<|eot_id|>' }}"
        "{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' and loop.first %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' + message['content'] }}"
        "{% for call in message.tool_calls or [] %}"
        "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
        "{{ '{\"name\": ' + (call.function.name | tojson) + ', \"parameters\": ' }}" + _ARGUMENTS + "{{ '}' }}"
        "{% endfor %}"
        "{{ '<|eot_id|>' }}"
        "{% else %}"
        "{{ '<|start_header_id|>' + ('ipython' if message['role'] == 'tool' else message['role']) }}"
        "{{ '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    eos_token="<|eot_id|>",
    tool_format="llama3",
    roles=_TOOL_ROLES,
)

# Mistral's tool layout ([AVAILABLE_TOOLS], [TOOL_CALLS] with call ids, [TOOL_RESULTS]). The system prompt and
# the tools go with the first user turn, not the last as in Mistral's own template, so that a conversation
# renders incrementally (each turn only appends text) and every turn's completion can be located.
MISTRAL = BuiltinTemplate(
    name="mistral",
    jinja=(
        "{% set ns = namespace(system='', first=true) %}"
        "{% set loop_messages = messages %}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set ns.system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}{% endif %}"
        "{% if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        "{% if ns.first and tools %}{{ '[AVAILABLE_TOOLS] ' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}{% endif %}"
        "{{ '[INST] ' }}{% if ns.first and ns.system %}{{ ns.system + '\n\n' }}{% endif %}"
        "{{ message['content'] + '[/INST]' }}"
        "{% set ns.first = false %}"
        "{% elif message['role'] == 'assistant' %}"
        "{% if message['content'] %}{{ ' ' + message['content'] }}{% endif %}"
        "{% if message.tool_calls %}{{ '[TOOL_CALLS] [' }}"
        "{% for call in message.tool_calls %}"
        "{{ '{\"name\": ' + (call.function.name | tojson) + ', \"arguments\": ' }}"
        + _ARGUMENTS
        + "{{ ', \"id\": ' + (call.id | tojson) + '}' }}{% if not loop.last %}{{ ', ' }}{% endif %}"
        "{% endfor %}{{ ']' }}{% endif %}"
        "{{ eos_token }}"
        "{% elif message['role'] == 'tool' %}"
        "{{ '[TOOL_RESULTS] {\"content\": ' + (message['content'] | tojson) + ', \"call_id\": ' }}"
        "{{ (message.tool_call_id or '') | tojson }}{{ '}[/TOOL_RESULTS]' }}"
        "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    special_tokens=(
        "[INST]",
        "[/INST]",
        "[AVAILABLE_TOOLS]",
        "[/AVAILABLE_TOOLS]",
        "[TOOL_CALLS]",
        "[TOOL_RESULTS]",
        "[/TOOL_RESULTS]",
    ),
    tool_format="mistral",
    roles=_TOOL_ROLES,
)

BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {t.name: t for t in (CHATML, ALPACA, HERMES, LLAMA3, MISTRAL)}
TOOL_TEMPLATES = tuple(name for name, template in BUILTIN_TEMPLATES.items() if template.tool_format)


def template_name(tokenizer) -> str:  # noqa: ANN001 - any tokenizer with a `chat_template`
    """How error messages name the tokenizer's chat template: its built-in name, or where it came from."""
    template = getattr(tokenizer, "chat_template", None)
    for builtin in BUILTIN_TEMPLATES.values():
        if template == builtin.jinja:
            return f"`{builtin.name}`"
    source = getattr(tokenizer, "name_or_path", "")
    return f"the chat template of `{source}`" if source else "the tokenizer's chat template"
