"""Rewards resolved from the config and checked before training: a reward that cannot run fails in seconds,
naming itself and the problem, instead of at the first generation step hours in.

The check binds each function to the keyword arguments TRL will pass, checks the reference columns the
library rewards need, then calls every reward on a sample batch built from the first training rows (an ideal
completion holding the reference answer, and an empty one) and requires exactly one finite float per completion.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_finetuning.config.grpo import RewardEntry
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.rewards.base import RewardFn, RewardSpec, references_at
from llm_finetuning.rewards.registry import get_reward

logger = logging.getLogger(__name__)

# What TRL passes every reward besides the dataset columns.
TRL_ARGUMENTS = ("prompts", "completions", "completion_ids")


@dataclass(frozen=True)
class Reward:
    """A reward ready to call: its name, function and weight, and its library spec (None for own functions)."""

    name: str
    fn: RewardFn
    weight: float
    spec: RewardSpec | None = None


def resolve_rewards(entries: Sequence[RewardEntry], judge: Any = None) -> list[Reward]:
    """The configured rewards as functions with weights; `judge` is the judge client for judged rewards."""
    rewards = []
    for index, entry in enumerate(entries):
        key = f"method.rewards.{index}"
        if entry.function is not None:
            rewards.append(
                Reward(entry.name, _import(entry.function, key), 1.0 if entry.weight is None else entry.weight)
            )
            continue
        spec = get_reward(entry.name)
        if spec.kind == "judge":
            if judge is None:
                raise ConfigError(
                    f"{key}: reward `{entry.name}` asks an LLM judge; add a `method.judge` section with its "
                    "`base_url` and `model`."
                )
            fn = spec.build(judge)
        else:
            fn = spec.fn
        rewards.append(
            Reward(
                entry.name, _named(fn, entry.name), spec.default_weight if entry.weight is None else entry.weight, spec
            )
        )
    return rewards


def _import(target: str, key: str) -> RewardFn:
    module_name, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{key}.function: cannot import `{target}` ({exc}); write it as `module:function`.") from None
    if not callable(fn):
        raise ConfigError(f"{key}.function: `{target}` is not callable.")
    return fn


def _named(fn: RewardFn, name: str) -> RewardFn:
    # TRL logs each reward under its function's __name__; judged rewards are closures, so give them the name.
    if getattr(fn, "__name__", None) != name:
        try:
            fn.__name__ = name  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
    return fn


def ideal_completion(references: list[str]) -> str:
    """A well-formed completion holding the first reference answer (used for the sample batch)."""
    answer = references[0] if references else "0"
    return f"<reasoning>\nWorked through the question step by step.\n</reasoning>\n<answer>\n{answer}\n</answer>"


def sample_batch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """TRL-shaped keyword arguments for the rows: two completions per row (ideal and empty), columns repeated."""
    conversational = bool(rows) and isinstance(rows[0].get("prompt"), list)
    kwargs: dict[str, Any] = {"prompts": [], "completions": [], "completion_ids": []}
    columns = [c for c in rows[0] if c != "prompt"] if rows else []
    for column in columns:
        kwargs[column] = []
    for row in rows:
        texts = [ideal_completion(references_at({k: [v] for k, v in row.items()}, 0)), ""]
        for text in texts:
            kwargs["prompts"].append(row["prompt"])
            kwargs["completions"].append([{"role": "assistant", "content": text}] if conversational else text)
            kwargs["completion_ids"].append(list(text.encode()))
            for column in columns:
                kwargs[column].append(row[column])
    return kwargs


def check_rewards(rewards: Sequence[Reward], rows: list[dict[str, Any]]) -> None:
    """Check every reward against the data; raise one UserError listing every problem found."""
    if not rows:
        raise UserError("no training rows to check the rewards on")
    columns = set(rows[0]) - {"prompt"}
    batch = sample_batch(rows)
    problems = []
    for reward in rewards:
        problem = _signature_problem(reward, columns) or _column_problem(reward, columns)
        problem = problem or _call_problem(reward, batch)
        if problem:
            problems.append(f"reward `{reward.name}`: {problem}")
    if problems:
        raise UserError("The rewards cannot run on this data:\n" + "\n".join(f"  - {p}" for p in problems))
    _warn_if_format_dominates(rewards)
    logger.info(
        "Rewards checked on %d sample completions: %s", len(batch["completions"]), ", ".join(r.name for r in rewards)
    )


def _signature_problem(reward: Reward, columns: set[str]) -> str | None:
    try:
        signature = inspect.signature(reward.fn)
    except (TypeError, ValueError):
        return None  # a builtin or C callable: the sample call decides
    passed = set(TRL_ARGUMENTS) | columns | {"trainer_state"}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    required = [
        name
        for name, p in signature.parameters.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    missing = [name for name in required if name not in passed]
    if missing:
        return (
            f"its parameter `{missing[0]}` is not a column of the data (columns: {', '.join(sorted(columns)) or 'none'}"
            "); rename it to a column or give it a default."
        )
    if not takes_any:
        unexpected = sorted(passed - set(signature.parameters))
        if unexpected:
            return (
                f"it would be called with {', '.join(f'`{u}`' for u in unexpected)} but does not take them; "
                "add `**kwargs` to its parameters."
            )
    return None


def _column_problem(reward: Reward, columns: set[str]) -> str | None:
    needed = reward.spec.references if reward.spec else ()
    if needed and not columns & set(needed):
        wanted = " or ".join(f"`{c}`" for c in needed)
        return (
            f"needs the reference column {wanted}, which the data does not have (columns: "
            f"{', '.join(sorted(columns)) or 'none'}); use a named dataset that keeps it, or map it with "
            "`data.train.columns`."
        )
    return None


def _call_problem(reward: Reward, batch: dict[str, Any]) -> str | None:
    expected = len(batch["completions"])
    try:
        values = reward.fn(**batch, trainer_state=None)
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported, not raised
        return f"raised {type(exc).__name__}: {exc} on a sample batch of {expected} completions."
    if not isinstance(values, Sequence) and not hasattr(values, "__len__"):
        return f"returned {type(values).__name__}, not a list of {expected} floats."
    values = list(values)
    if len(values) != expected:
        return f"returned {len(values)} values for {expected} completions; return one float per completion."
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            return f"returned {value!r} ({type(value).__name__}) for completion {index}; return a float."
        if not math.isfinite(float(value)):
            return f"returned {float(value)} for completion {index}; rewards must be finite."
    return None


def _warn_if_format_dominates(rewards: Sequence[Reward]) -> None:
    """The collection's format rewards could out-score a correct answer; warn when the weights allow it."""
    correctness = [r for r in rewards if r.spec and r.spec.kind == "correctness" and r.spec.max_value]
    formats = [r for r in rewards if r.spec and r.spec.kind == "format" and r.spec.max_value]
    if not correctness or not formats:
        return
    best = max(r.weight * r.spec.max_value for r in correctness)
    total = sum(r.weight * r.spec.max_value for r in formats)
    if total >= best:
        logger.warning(
            "The format rewards (%s) can add up to %.2f, at least the %.2f a correct answer earns: a wrong answer "
            "in the right format may out-score a correct one. Lower their weights in `method.rewards`.",
            ", ".join(r.name for r in formats),
            total,
            best,
        )
