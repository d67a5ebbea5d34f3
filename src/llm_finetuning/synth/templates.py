"""The built-in prompt templates of the generation tasks, by name. Placeholders are `${name}`; a config replaces a
template with `task.templates: {name: text}`. Each row records the template it came from as `name@hash`, so rows
written with different wording are never mistaken for one another."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping

from llm_finetuning.errors import ConfigError

BUILTIN: dict[str, str] = {
    "self_instruct": (
        "Write ${count} new task instructions for an AI assistant. Here are examples of the kind of task meant:\n\n"
        "${examples}\n\n"
        "The new instructions must differ from the examples and from each other in topic, wording and kind of "
        "task (questions, writing, rewriting, classification, planning, reasoning...). Each must stand on its "
        "own and be answerable in text. Reply with a numbered list of ${count} instructions and nothing else."
    ),
    "evol_rewrite": (
        "Act as a prompt rewriter. Rewrite the prompt below into a harder version that a capable assistant can "
        "still answer well. ${operation} The new prompt must stand on its own, read naturally, and be at most "
        "about 20 words longer than the original. Reply with the rewritten prompt only.\n\n"
        "Prompt:\n${prompt}"
    ),
    "evol_breadth": (
        "Act as a prompt creator. Taking the prompt below as inspiration, write a brand-new prompt from the same "
        "domain on a rarer topic, of similar length and difficulty. Reply with the new prompt only.\n\n"
        "Prompt:\n${prompt}"
    ),
    "user_turn": (
        "Below is a conversation between a user and an AI assistant. Write the user's next message: a natural "
        "follow-up (a request for more detail, an objection, a related question or a next step). Reply with "
        "the message only, written as the user would write it.\n\n${conversation}"
    ),
    "critique": "${critique}",
    "revision": "${revision}",
}

# The instruction each Evol-Instruct operation puts into `evol_rewrite`.
OPERATIONS: dict[str, str] = {
    "constraints": "Add one more constraint or requirement to it.",
    "deepen": "Ask for more depth and breadth on the issue it raises.",
    "concretize": "Replace general concepts in it with more specific ones.",
    "reasoning": "If it can be solved in one or two simple steps, make it explicitly require several steps of "
    "reasoning.",
}


def template_id(name: str, text: str) -> str:
    return f"{name}@{hashlib.sha256(text.encode()).hexdigest()[:8]}"


class Templates:
    """The templates of one task: the built-in ones with the config's replacements."""

    def __init__(self, overrides: Mapping[str, str], names: tuple[str, ...]) -> None:
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ConfigError(
                f"task.templates: unknown template {', '.join(unknown)}; this task uses {', '.join(names)}"
            )
        self.texts = {name: overrides.get(name, BUILTIN[name]) for name in names}

    def render(self, name: str, **values: str) -> str:
        return string.Template(self.texts[name]).safe_substitute(values)

    def id(self, name: str) -> str:
        return template_id(name, self.texts[name])
