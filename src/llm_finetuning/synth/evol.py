"""Evol-Instruct: prompts rewritten into harder ones, round after round, then answered.

Each round draws one operation (seeded per prompt, so a rerun draws the same): four in-depth rewrites (more
constraints, deeper, more concrete, more reasoning steps) and one in-breadth (a new prompt of the same domain).
A rewrite is eliminated, and the prompt's evolution stops at the last good one, when it is empty, a copy of the
prompt it came from, a refusal, or it leaks the rewriting instructions ("rewritten prompt", "#Prompt#"). An
answer that is a short refusal eliminates its prompt too: the paper's sign of a prompt evolved past what the
model can do.
"""

from __future__ import annotations

import random
import re
from typing import Any

from llm_finetuning.synth.common import (
    Messages,
    PromptRow,
    TaskStats,
    Teacher,
    looks_like_refusal,
    map_concurrently,
    normalised,
)
from llm_finetuning.synth.config import EvolInstructTask
from llm_finetuning.synth.templates import OPERATIONS, Templates

TEMPLATES = ("evol_rewrite", "evol_breadth")
_LEAK = re.compile(r"rewritten prompt|given prompt|#\s*(new |rewritten |created )?prompt\s*#|^prompt\s*:", re.I | re.M)


def rewrite_problem(original: str, rewrite: str | None) -> str | None:
    """Why a rewrite is eliminated (`failed`, `empty`, `copy`, `refusal`, `leak`), or None when it is kept."""
    if rewrite is None:
        return "failed"
    if not rewrite.strip():
        return "empty"
    if normalised(rewrite) == normalised(original):
        return "copy"
    if looks_like_refusal(rewrite):
        return "refusal"
    if _LEAK.search(rewrite):
        return "leak"
    return None


def _evolve(task: EvolInstructTask, teacher: Teacher, templates: Templates, seed: int, row: PromptRow) -> dict:
    rng = random.Random(f"{seed}:evol:{row.where}")
    current, chain, stops = row.text, [], None
    versions: list[tuple[str, list[str]]] = []
    for round_ in range(task.rounds):
        operation = rng.choice(task.operations)
        if operation == "breadth":
            prompt = templates.render("evol_breadth", prompt=current)
        else:
            prompt = templates.render("evol_rewrite", prompt=current, operation=OPERATIONS[operation])
        reply = teacher.ask([{"role": "user", "content": prompt}], tag=f"evol/{round_}/{operation}")
        problem = rewrite_problem(current, reply)
        if problem is not None:
            stops = problem
            break
        current = reply
        chain.append(operation)
        versions.append((current, list(chain)))
    if not task.keep_intermediate:
        versions = versions[-1:]
    answered = []
    for text, operations in versions:
        messages: Messages = [*row.messages[:-1], {"role": "user", "content": text}]
        answer = teacher.ask(messages, tag="evol/answer")
        answered.append((messages, operations, answer))
    return {"answered": answered, "stopped": stops}


def run_evol_instruct(
    task: EvolInstructTask, teacher: Teacher, rows: list[PromptRow], seed: int, stats: TaskStats
) -> list[dict[str, Any]]:
    templates = Templates(task.templates, TEMPLATES)
    stats.inputs = len(rows)
    results = map_concurrently(teacher, rows, lambda row: _evolve(task, teacher, templates, seed, row))
    out = []
    for row, result in zip(rows, results, strict=True):
        if result["stopped"] is not None:
            stats.drop(f"rewrite_{result['stopped']}")
        if not result["answered"]:
            continue
        for messages, operations, answer in result["answered"]:
            if answer is None:
                stats.drop("answer_failed")
                continue
            if looks_like_refusal(answer):
                stats.drop("answer_refusal")
                continue
            provenance = {
                "teacher": teacher.model,
                "task": "evol_instruct",
                "template": [templates.id(n) for n in TEMPLATES],
                "seed": row.where,
                "original": row.text,
                "operations": operations,
            }
            out.append({"messages": [*messages, {"role": "assistant", "content": answer}], "provenance": provenance})
    stats.rows = len(out)
    return out
