"""Constitutional AI's supervised stage: answer, critique against a principle, revise; repeat.

For each prompt the model answers; then, for each round, a principle is drawn (seeded per prompt) and the
model is asked, in the same conversation, to critique its last reply by that principle's critique request and
then to rewrite it by its revision request. The last revision becomes an SFT row; (revision, original) becomes a
preference pair for DPO or a reward model. A prompt whose revision is the original again (same words) gives an
SFT row but no pair: there is no preference to learn from it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llm_finetuning.errors import ConfigError
from llm_finetuning.synth.common import Messages, PromptRow, TaskStats, Teacher, map_concurrently, normalised
from llm_finetuning.synth.config import ConstitutionalTask
from llm_finetuning.synth.templates import Templates, template_id

TEMPLATES = ("critique", "revision")


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str


def load_constitution(spec: str) -> list[Principle]:
    """`builtin:NAME` or a YAML file of `principles: [{name, critique, revision}]`; errors name the entry."""
    import yaml

    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        source = resources.files(__package__) / "constitutions" / f"{name}.yaml"
        if not source.is_file():
            raise ConfigError(f"task.constitution: no built-in constitution `{name}`; the built-in one is `harmless`")
        text, where = source.read_text(encoding="utf-8"), spec
    else:
        try:
            text, where = Path(spec).read_text(encoding="utf-8"), spec
        except OSError as exc:
            raise ConfigError(f"task.constitution: cannot read {spec} ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from None
    entries = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: expected `principles:` with a list of {{name, critique, revision}}")
    principles = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - {"name", "critique", "revision"}:
            raise ConfigError(f"{where}: principles[{index}] must have only `name`, `critique` and `revision`")
        for key in ("critique", "revision"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ConfigError(f"{where}: principles[{index}].{key} must be a non-empty text")
        principles.append(
            Principle(str(entry.get("name", f"principle{index + 1}")), entry["critique"], entry["revision"])
        )
    return principles


def _revise(
    task: ConstitutionalTask, model: Teacher, templates: Templates, principles: list[Principle], seed: int,
    row: PromptRow,
) -> dict[str, Any] | None:  # fmt: skip
    rng = random.Random(f"{seed}:constitution:{row.where}")
    original = model.ask(row.messages, tag="cai/answer")
    if not original:
        return None
    current, steps = original, []
    for round_ in range(task.revisions):
        principle = rng.choice(principles)
        conversation: Messages = [*row.messages, {"role": "assistant", "content": current}]
        critique_request = templates.render("critique", critique=principle.critique)
        conversation.append({"role": "user", "content": critique_request})
        critique = model.ask(conversation, tag=f"cai/critique/{round_}")
        if not critique:
            return {"original": original, "revision": None, "steps": steps}
        conversation.append({"role": "assistant", "content": critique})
        conversation.append({"role": "user", "content": templates.render("revision", revision=principle.revision)})
        revision = model.ask(conversation, tag=f"cai/revision/{round_}")
        if not revision:
            return {"original": original, "revision": None, "steps": steps}
        steps.append({"principle": principle.name, "critique": critique})
        current = revision
    return {"original": original, "revision": current, "steps": steps}


def run_constitutional(
    task: ConstitutionalTask, model: Teacher, rows: list[PromptRow], seed: int, stats: TaskStats
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    principles = load_constitution(task.constitution)
    templates = Templates(task.templates, TEMPLATES)
    stats.inputs = len(rows)
    results = map_concurrently(model, rows, lambda row: _revise(task, model, templates, principles, seed, row))
    sft, pairs = [], []
    for row, result in zip(rows, results, strict=True):
        if result is None:
            stats.drop("answer_failed")
            continue
        if result["revision"] is None:
            stats.drop("revision_failed")
            continue
        provenance = {
            "model": model.model,
            "task": "constitutional",
            "template": [templates.id(n) for n in TEMPLATES],
            "constitution": template_id(task.constitution, "\n".join(p.critique + p.revision for p in principles)),
            "seed": row.where,
            "principles": [step["principle"] for step in result["steps"]],
            "critiques": [step["critique"] for step in result["steps"]],
        }
        revision = {"role": "assistant", "content": result["revision"]}
        sft.append({"messages": [*row.messages, revision], "provenance": provenance})
        if normalised(result["revision"]) == normalised(result["original"]):
            stats.drop("unchanged_pair")
            continue
        original = {"role": "assistant", "content": result["original"]}
        pairs.append({"prompt": row.messages, "chosen": [revision], "rejected": [original], "provenance": provenance})
    stats.rows = len(sft)
    stats.extra["pairs"] = len(pairs)
    return sft, pairs
