"""Self-instruct: new instructions from a few examples at a time, kept when they are new enough, then answered.

Each request shows `examples_per_request` instructions drawn from the seed tasks and (once there are some) the
instructions kept so far, and asks for `new_per_request` more. A new instruction is dropped when it is too short
or too long, asks for something a text model cannot do (images, audio, files), or when its ROUGE-L F1 with any
seed or kept instruction is at or above `max_similarity`: the filter of the self-instruct paper, which keeps the
set diverse instead of a teacher's favourite question asked a hundred ways.
"""

from __future__ import annotations

import random
import re
from typing import Any

from llm_finetuning.synth.common import PromptRow, TaskStats, Teacher, map_concurrently
from llm_finetuning.synth.config import SelfInstructTask
from llm_finetuning.synth.templates import Templates

TEMPLATES = ("self_instruct",)
_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|[-*])\s+(.*\S)\s*$")
_NOT_TEXT = re.compile(r"\b(image|images|picture|photo|graph|diagram|audio|video|file attached|draw)\b", re.I)


def parse_instructions(reply: str) -> list[str]:
    """The items of a numbered (or bulleted) list; lines that continue an item join it. A reply with no list is
    one instruction per non-empty line."""
    items: list[str] = []
    listed = False
    for line in reply.splitlines():
        match = _ITEM.match(line)
        if match:
            items.append(match.group(1))
            listed = True
        elif line.strip() and listed and items:
            items[-1] += " " + line.strip()
    if not listed:
        items = [line.strip() for line in reply.splitlines() if line.strip()]
    return [item.strip() for item in items if item.strip()]


def _rouge_l(a: str, b: str) -> float:
    from llm_finetuning.evaluation.metrics import rouge

    return rouge(a, b)["rougeL"]


def _seed_text(row: PromptRow) -> str:
    return row.text


def run_self_instruct(
    task: SelfInstructTask, teacher: Teacher, seeds: list[PromptRow], seed: int, stats: TaskStats
) -> list[dict[str, Any]]:
    templates = Templates(task.templates, TEMPLATES)
    rng = random.Random(f"{seed}:self_instruct")
    pool_texts = [_seed_text(row) for row in seeds]  # every instruction a new one is compared with
    kept: list[tuple[str, dict[str, Any]]] = []
    stats.inputs = len(seeds)
    for request in range(task.max_requests):
        if len(kept) >= task.num_instructions:
            break
        # Seeds stay in every prompt (they anchor the style); kept instructions fill the rest once there are some.
        from_new = min(len(kept), task.examples_per_request // 2)
        shown_seeds = rng.sample(seeds, min(len(seeds), task.examples_per_request - from_new))
        shown_new = rng.sample(kept, from_new)
        examples = [_seed_text(row) for row in shown_seeds] + [text for text, _ in shown_new]
        listing = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, 1))
        prompt = templates.render("self_instruct", examples=listing, count=str(task.new_per_request))
        reply = teacher.ask([{"role": "user", "content": prompt}], tag=f"self_instruct/{request}")
        if reply is None:
            continue
        for text in parse_instructions(reply):
            words = len(text.split())
            if words < 3 or words > 150:
                stats.drop("length")
            elif _NOT_TEXT.search(text):
                stats.drop("not_text")
            elif any(_rouge_l(text, other) >= task.max_similarity for other in pool_texts):
                stats.drop("too_similar")
            else:
                pool_texts.append(text)
                origin = {"seed": [row.where for row in shown_seeds], "request": request}
                kept.append((text, origin))
                if len(kept) >= task.num_instructions:
                    break
    stats.extra["target"] = task.num_instructions
    stats.extra["instructions_kept"] = len(kept)
    answers = map_concurrently(
        teacher, kept, lambda item: teacher.ask([{"role": "user", "content": item[0]}], "self_instruct/answer")
    )
    out = []
    for (text, origin), answer in zip(kept, answers, strict=True):
        if answer is None:
            stats.drop("answer_failed")
            continue
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        provenance = {"teacher": teacher.model, "task": "self_instruct", "template": templates.id("self_instruct")}
        out.append({"messages": messages, "provenance": {**provenance, **origin}})
    stats.rows = len(out)
    return out
