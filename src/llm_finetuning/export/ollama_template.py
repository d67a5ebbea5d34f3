"""An Ollama chat template (Go `text/template`) derived from a model's Jinja chat template, and proved equal.

Jinja templates are programs; rather than translating one, the derivation renders conversations whose
contents are unique sentinel words and reads off what the template writes around them: the text before
the first message (BOS, a default system prompt), before and after each role's content, between turns, the
generation prompt, and where a system prompt goes (its own block first, or folded into the first or the
last user message, as Llama 2 and Mistral do). A Go template is then written from those pieces and
rendered (with Go's semantics, `go_template`) on probe conversations (with and without a system prompt,
one to three turns, contents with newlines, quotes, braces, tabs and non-ASCII text, and a final assistant
message left open to continue) next to the Jinja rendering: any difference is an error, never a silent
change of the prompt format the model was trained on.

One difference is accepted and reported: a template that strips white space around contents (Jinja `trim`,
Llama 3 and Mistral do) cannot be copied, as Go templates have no string functions; Ollama then passes
contents unchanged, which only matters for messages that begin or end with white space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from llm_finetuning.errors import UserError
from llm_finetuning.export.go_template import Message, go_quote, render

logger = logging.getLogger(__name__)

Messages = Sequence[dict[str, str]]
SYSTEM_STYLES = ("block", "first_user", "last_user", "none")
# Sentinels: words no template writes, which survive any template unchanged.
S, A, B, C = "zqsysq", "zqaaq", "zqbbq", "zqccq"
PROBE_TEXTS = (
    "Hello there!",
    "Two lines:\nfirst\n\nsecond",
    "Tabs\tand  double  spaces, caf\u00e9 \u2713 \u4f60\u597d",
    'Quotes " \' """ a backslash \\ and {{ .Braces }} {% raw %}',
    "  padded on both sides \n",
    "\nstarts with a newline",
    "ends with spaces  ",
)
PROBE_ROLES = (
    ("user",),
    ("system", "user"),
    ("user", "assistant", "user"),
    ("system", "user", "assistant", "user"),
    ("user", "assistant", "user", "assistant", "user"),
    ("system", "user", "assistant", "user", "assistant", "user"),
)
CONTINUE_ROLES = (("user", "assistant"), ("system", "user", "assistant", "user", "assistant"))


@dataclass(frozen=True)
class ChatLayout:
    """The texts a chat template writes around message contents."""

    start: str
    """Before the first message when there is no system prompt (BOS, a default system block)."""
    user_open: str
    user_close: str
    generation: str
    """After the last user message, on top of `user_close` (the assistant header)."""
    assistant_open: str
    assistant_close: str
    system: str = "none"
    """`block` (`system_open` + prompt + `system_close` replaces `start`), `first_user` / `last_user` (the
    prompt goes between `system_open` and `system_close` at the start of that user message), or `none`."""
    system_open: str = ""
    system_close: str = ""
    trimmed: tuple[str, ...] = ()
    """Roles whose contents the template strips of surrounding white space."""


@dataclass(frozen=True)
class OllamaChat:
    """A Go template for Ollama and what goes with it."""

    template: str
    stops: tuple[str, ...]
    notes: tuple[str, ...]
    """Differences from the training template that could not be avoided, for the log and the Modelfile."""
    probes: int
    """Conversations on which the template was checked to render as the training template does."""


def cannot(reason: str) -> UserError:
    return UserError(
        f"The chat template cannot be expressed as an Ollama template: {reason}. Export with `--format gguf` "
        "(the GGUF embeds the Jinja template, which llama.cpp renders) or `--format hf`, and write the "
        "Modelfile's TEMPLATE by hand."
    )


def _jinja(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, generation: bool = True, continued: bool = False
) -> str | None:
    """The training rendering; None where the template rejects the conversation."""
    try:
        return tokenizer.apply_chat_template(
            list(messages),
            tokenize=False,
            add_generation_prompt=generation and not continued,
            continue_final_message=continued,
        )
    except Exception:  # jinja's own errors (raise_exception) and transformers' ValueErrors alike
        return None


def _pieces(text: str | None, sentinels: Sequence[str]) -> list[str] | None:
    """The text around each sentinel, in order; None unless each occurs exactly once, in that order."""
    if text is None:
        return None
    pieces, position = [], 0
    for sentinel in sentinels:
        found = text.find(sentinel, position)
        if found < 0 or text.count(sentinel) != 1:
            return None
        pieces.append(text[position:found])
        position = found + len(sentinel)
    pieces.append(text[position:])
    return pieces


def _conversation(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in pairs]


def derive_layout(tokenizer: PreTrainedTokenizerBase) -> ChatLayout:
    """Read the layout off the tokenizer's chat template; `UserError` if it has none that Ollama can copy."""
    u, a, c = ("user", A), ("assistant", B), ("user", C)
    user_only = _pieces(_jinja(tokenizer, _conversation(u), generation=False), [A])
    prompted = _pieces(_jinja(tokenizer, _conversation(u)), [A])
    answered = _pieces(_jinja(tokenizer, _conversation(u, a), generation=False), [A, B])
    two_turns = _pieces(_jinja(tokenizer, _conversation(u, a, c)), [A, B, C])
    if user_only is None or prompted is None or answered is None or two_turns is None:
        raise cannot("it does not render plain user/assistant conversations with each content once, unchanged")
    head, user_close = user_only
    tail = prompted[1]
    if prompted[0] != head or not tail.startswith(user_close):
        raise cannot("the generation prompt changes the text before the last user message")
    between, assistant_close = answered[1:]
    if answered[0] != head or not between.startswith(user_close):
        raise cannot("a user message followed by an answer ends differently from the last user message")
    if two_turns[0] != head or two_turns[1] != between or two_turns[3] != tail:
        raise cannot("the text around a turn depends on the turns after it")
    if not two_turns[2].startswith(assistant_close):
        raise cannot("an answer followed by another user message ends differently from the last answer")
    user_open = two_turns[2][len(assistant_close) :]
    if not head.endswith(user_open):
        raise cannot("the first user message is introduced differently from the later ones")
    layout = ChatLayout(
        start=head[: len(head) - len(user_open)],
        user_open=user_open,
        user_close=user_close,
        generation=tail[len(user_close) :],
        assistant_open=between[len(user_close) :],
        assistant_close=assistant_close,
    )
    layout = _with_system(tokenizer, layout, head, tail)
    return replace(layout, trimmed=_trimmed_roles(tokenizer, layout))


def _with_system(tokenizer: PreTrainedTokenizerBase, layout: ChatLayout, head: str, tail: str) -> ChatLayout:
    """Where the system prompt goes: its own block, or folded into the first or last user message."""
    rendered = _jinja(tokenizer, _conversation(("system", S), ("user", A)))
    if rendered is None:
        logger.info("The chat template rejects system messages; the Ollama template leaves them out too.")
        return layout
    if S not in rendered and rendered == _jinja(tokenizer, _conversation(("user", A))):
        return layout  # the template ignores system messages
    pieces = _pieces(rendered, [S, A])
    if pieces is None:
        if rendered.count(S) == 1:
            raise cannot("the system prompt is written after the first user message")
        raise cannot("it does not render the system prompt once, unchanged")
    before, after, end = pieces
    if end != tail:
        raise cannot("a system prompt changes the text after the last user message")
    if after.endswith(layout.user_open):
        close = after[: len(after) - len(layout.user_open)]
        return replace(layout, system="block", system_open=before, system_close=close)
    if before.startswith(head):
        longer = _conversation(("system", S), ("user", A), ("assistant", B), ("user", C))
        rendered = _jinja(tokenizer, longer)
        style = (
            "first_user"
            if _pieces(rendered, [S, A, B, C]) is not None
            else "last_user"
            if _pieces(rendered, [A, B, S, C]) is not None
            else None
        )
        if style is None:
            raise cannot("the system prompt moves into a user message other than the first or the last")
        return replace(layout, system=style, system_open=before[len(head) :], system_close=after)
    raise cannot("the system prompt is neither a block before the conversation nor part of a user message")


def _trimmed_roles(tokenizer: PreTrainedTokenizerBase, layout: ChatLayout) -> tuple[str, ...]:
    """Roles whose contents lose surrounding white space in the rendering (Jinja `trim`)."""
    roles = ("system", "user", "assistant") if layout.system != "none" else ("user", "assistant")
    plain = _conversation(("system", S), ("user", A), ("assistant", B), ("user", C))
    if layout.system == "none":
        plain = plain[1:]
    reference = _jinja(tokenizer, plain)
    trimmed = []
    for role in roles:
        padded = [{**m, "content": f" \n {m['content']} \n"} if m["role"] == role else m for m in plain]
        if _jinja(tokenizer, padded) == reference:
            trimmed.append(role)
    return tuple(trimmed)


def without_bos(layout: ChatLayout, bos: str) -> tuple[ChatLayout, bool]:
    """The layout without its leading BOS, for a runtime that prepends BOS itself (and so would double it);
    also whether it had one."""
    if not bos or not layout.start.startswith(bos):
        return layout, False
    layout = replace(layout, start=layout.start[len(bos) :])
    if layout.system == "block":
        if not layout.system_open.startswith(bos):
            raise cannot("the template starts with BOS only when there is no system prompt")
        layout = replace(layout, system_open=layout.system_open[len(bos) :])
    return layout, True


# ------------------------------------------------------------------------------------------- Go template
def _literal(text: str) -> str:
    # Literal text goes in string literals: layout white space between actions can then be trimmed without
    # touching it, and characters a Modelfile would drop are escaped.
    return "{{ " + go_quote(text) + " }}" if text else ""


def go_chat_template(layout: ChatLayout) -> str:
    """The Ollama TEMPLATE for a layout (over `.System` and `.Messages`)."""
    lines = []
    if layout.system == "block":
        lines.append(
            "{{- if .System }}" + _literal(layout.system_open) + "{{ .System }}" + _literal(layout.system_close)
        )
        if layout.start:
            lines.append("{{- else }}" + _literal(layout.start))
        lines.append("{{- end }}")
    elif layout.start:
        lines.append("{{- " + go_quote(layout.start) + " }}")
    if layout.system == "first_user":
        lines.append("{{- $system := .System }}")
    lines.append("{{- range $i, $m := .Messages }}")
    lines.append("{{- $last := eq (len (slice $.Messages $i)) 1 }}")
    user = '{{- if eq $m.Role "user" }}' + _literal(layout.user_open)
    fold = _literal(layout.system_open) + "{{ %s }}" + _literal(layout.system_close)
    if layout.system == "first_user":
        user += "{{ if $system }}" + fold % "$system" + '{{ $system = "" }}{{ end }}'
    elif layout.system == "last_user":
        user += "{{ if and $.System $last }}" + fold % "$.System" + "{{ end }}"
    user += "{{ $m.Content }}"
    if layout.generation:
        last, other = _literal(layout.user_close + layout.generation), _literal(layout.user_close)
        user += "{{ if $last }}" + last + "{{ else }}" + other + "{{ end }}"
    else:
        user += _literal(layout.user_close)
    lines.append(user)
    assistant = '{{- else if eq $m.Role "assistant" }}' + _literal(layout.assistant_open) + "{{ $m.Content }}"
    if layout.assistant_close:  # a last answer stays open: Ollama continues it
        assistant += "{{ if not $last }}" + _literal(layout.assistant_close) + "{{ end }}"
    lines += [assistant, "{{- end }}", "{{- end }}"]
    return "\n".join(lines)


def ollama_values(messages: Messages) -> dict:
    """What Ollama passes to a template for a chat: consecutive messages of one role merged (joined by a blank
    line), and `.System` holding every system message."""
    collated: list[Message] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if collated and collated[-1].Role == role and role != "tool":
            collated[-1] = Message(role, collated[-1].Content + "\n\n" + content)
        else:
            collated.append(Message(role, content))
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": collated, "Tools": [], "Response": ""}


def render_ollama(template: str, messages: Messages) -> str:
    """The prompt Ollama builds from `template` for a chat request with these messages."""
    return render(template, ollama_values(messages))


# ------------------------------------------------------------------------------------------- checks
def probe_conversations(with_system: bool = True) -> list[tuple[list[dict[str, str]], bool]]:
    """(messages, continue the final answer) pairs on which a template is checked."""
    probes = []
    for number, roles in enumerate(PROBE_ROLES + CONTINUE_ROLES):
        if "system" in roles and not with_system:
            continue
        continued = roles in CONTINUE_ROLES
        texts = [PROBE_TEXTS[(number + i) % len(PROBE_TEXTS)] for i in range(len(roles))]
        if continued:  # an answer to continue ends where its content ends
            texts[-1] = texts[-1].strip()
        probes.append((_conversation(*zip(roles, texts, strict=True)), continued))
    return probes


def _stripped(messages: Messages, roles: Sequence[str]) -> list[dict[str, str]]:
    return [{**m, "content": m["content"].strip()} if m["role"] in roles else dict(m) for m in messages]


def verify(
    tokenizer: PreTrainedTokenizerBase, template: str, bos_removed: str = "", trimmed: Sequence[str] = ()
) -> int:
    """Check that `template` renders every probe conversation as the training template does (less a leading
    `bos_removed`, which the runtime adds, and with `trimmed` roles' contents stripped, which Go cannot do);
    `UserError` naming the first difference. Returns the number of conversations checked."""
    with_system = _jinja(tokenizer, _conversation(("system", S), ("user", A))) is not None
    probes = probe_conversations(with_system)
    for messages, continued in probes:
        expected = _jinja(tokenizer, messages, continued=continued)
        if expected is None:
            raise cannot(f"it rejects the conversation {[m['role'] for m in messages]}")
        if bos_removed:
            expected = expected.removeprefix(bos_removed)
        got = render_ollama(template, _stripped(messages, trimmed))
        if got != expected:
            at = next((i for i, (x, y) in enumerate(zip(got, expected, strict=False)) if x != y), None)
            at = min(len(got), len(expected)) if at is None else at
            roles = " + ".join(m["role"] for m in messages) + (" (continued)" if continued else "")
            raise cannot(
                f"for a {roles} conversation the derived template writes {got[max(0, at - 30) : at + 30]!r} "
                f"where the training template writes {expected[max(0, at - 30) : at + 30]!r}"
            )
    return len(probes)


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    specials = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    specials |= set(tokenizer.all_special_tokens)
    return sorted((s for s in specials if s), key=len, reverse=True)  # longest first: match whole tokens


def _specials_in(text: str, specials: Sequence[str]) -> list[str]:
    found, position = [], 0
    while position < len(text):
        match = next((s for s in specials if text.startswith(s, position)), None)
        if match is not None:
            found.append(match)
        position += len(match) if match is not None else 1
    return found


def stop_sequences(tokenizer: PreTrainedTokenizerBase, layout: ChatLayout) -> tuple[str, ...]:
    """Where a reply ends: EOS, the special tokens that close a turn or open the next, and, where turns are
    marked in plain text (`### Instruction:`), the text that opens a user turn."""
    specials = _special_tokens(tokenizer)
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    for text in (layout.assistant_close, layout.user_open, layout.generation, layout.assistant_open):
        stops += _specials_in(text, specials)
    stops += _specials_in(layout.user_close, specials)
    if layout.user_open.strip() and not _specials_in(layout.user_open, specials):
        stops.append(layout.user_open.strip())
    unique = dict.fromkeys(s for s in stops if s and s != tokenizer.bos_token)
    return tuple(unique)


def ollama_chat(tokenizer: PreTrainedTokenizerBase, runtime_adds_bos: bool) -> OllamaChat:
    """The Ollama template, stops and notes for this tokenizer's chat template, checked on the probes.

    `runtime_adds_bos`: whether the runtime prepends BOS to every prompt (the GGUF's
    `tokenizer.ggml.add_bos_token`); the template then leaves out the BOS the training template writes, so
    the model sees one BOS, as in training."""
    layout = derive_layout(tokenizer)
    notes = []
    bos = tokenizer.bos_token or ""
    bos_removed = ""
    if runtime_adds_bos and bos:
        layout, removed = without_bos(layout, bos)
        bos_removed = bos if removed else ""
        if not removed:
            notes.append(
                f"the runtime prepends BOS ({bos}) to every prompt but the training template does not start with "
                "it: prompts have one token more at the start than in training"
            )
    if layout.trimmed:
        notes.append(
            f"the training template strips white space around {', '.join(layout.trimmed)} contents; Go templates "
            "cannot, so Ollama keeps it (prompts match training for contents that do not start or end with "
            "white space)"
        )
    from llm_finetuning.data.tool_parsers import format_for_template

    if format_for_template(tokenizer.chat_template) is not None:
        notes.append(
            "the training template declares tools and writes tool calls; the Ollama template covers plain chat only "
            "(no `.Tools` or tool calls), so serve tool calling with `llmft serve` or llama.cpp's Jinja template"
        )
    template = go_chat_template(layout)
    probes = verify(tokenizer, template, bos_removed, layout.trimmed)
    return OllamaChat(template, stop_sequences(tokenizer, layout), tuple(notes), probes)
