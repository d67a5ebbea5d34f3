"""Multi-turn conversations: the teacher answers, then plays the user and asks a follow-up, turn after turn.

The user's side is written from the conversation so far shown as a transcript (so the teacher writes as the
user, not as the assistant); a conversation whose follow-up or answer failed keeps the turns it completed when
it has at least two user turns, and is dropped otherwise.
"""

from __future__ import annotations

from typing import Any

from llm_finetuning.synth.common import Messages, PromptRow, TaskStats, Teacher, map_concurrently
from llm_finetuning.synth.config import MultiTurnTask
from llm_finetuning.synth.templates import Templates

TEMPLATES = ("user_turn",)


def transcript(messages: Messages) -> str:
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages if m["role"] != "system")


def _converse(task: MultiTurnTask, teacher: Teacher, templates: Templates, row: PromptRow) -> tuple[Messages, int]:
    system = [{"role": "system", "content": task.system}] if task.system else []
    messages: Messages = [*system, *[m for m in row.messages if m["role"] != "system" or not system]]
    completed = 0
    for turn in range(task.turns):
        if turn:
            prompt = templates.render("user_turn", conversation=transcript(messages))
            follow_up = teacher.ask([{"role": "user", "content": prompt}], tag=f"multi_turn/user/{turn}")
            if not follow_up:
                break
            messages = [*messages, {"role": "user", "content": follow_up}]
        answer = teacher.ask(messages, tag=f"multi_turn/assistant/{turn}")
        if not answer:
            messages = messages[:-1] if turn else messages
            break
        messages = [*messages, {"role": "assistant", "content": answer}]
        completed += 1
    return messages, completed


def run_multi_turn(
    task: MultiTurnTask, teacher: Teacher, rows: list[PromptRow], seed: int, stats: TaskStats
) -> list[dict[str, Any]]:
    del seed  # nothing is drawn at random: the conversation follows from the teacher's replies
    templates = Templates(task.templates, TEMPLATES)
    stats.inputs = len(rows)
    results = map_concurrently(teacher, rows, lambda row: _converse(task, teacher, templates, row))
    out = []
    for row, (messages, completed) in zip(rows, results, strict=True):
        if completed < min(2, task.turns):
            stats.drop("incomplete")
            continue
        if completed < task.turns:  # kept, with the turns it completed
            stats.extra["shortened"] = stats.extra.get("shortened", 0) + 1
        provenance = {
            "teacher": teacher.model,
            "task": "multi_turn",
            "template": templates.id("user_turn"),
            "seed": row.where,
            "turns": completed,
        }
        out.append({"messages": messages, "provenance": provenance})
    stats.rows = len(out)
    return out
