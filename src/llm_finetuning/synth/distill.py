"""Answer distillation with rejection sampling: n teacher samples per prompt, scored, the best kept.

Scores come from a reward of the library (called as GRPO calls it: `prompts`, `completions` and the row's other
columns, e.g. the reference `answer`) or from a judge rubric in [0, 1]. Samples below `min_score` are rejected;
`keep: best` writes the highest-scoring accepted sample (the earliest on a tie), `keep: all` every accepted one.
With `preference_output`, the best accepted and the worst sample of a prompt also become a preference pair when
their scores differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llm_finetuning.errors import ConfigError
from llm_finetuning.judge.client import JudgeClient
from llm_finetuning.judge.rubrics import RUBRICS, JudgeItem
from llm_finetuning.synth.common import PromptRow, TaskStats, Teacher, map_concurrently
from llm_finetuning.synth.config import DistillTask, ScoreConfig

Scorer = Callable[[PromptRow, list[str]], list[float]]


def make_scorer(score: ScoreConfig, judge: JudgeClient | None) -> Scorer:
    """A function giving one float per sample of a row."""
    if score.rubric is not None:
        if score.rubric not in RUBRICS:
            raise ConfigError(f"task.score.rubric: unknown rubric `{score.rubric}`; choose {', '.join(RUBRICS)}")
        rubric = RUBRICS[score.rubric]

        def by_rubric(row: PromptRow, samples: list[str]) -> list[float]:
            references = row.columns.get("answers", row.columns.get("answer"))
            if isinstance(references, list):
                refs = tuple(str(r) for r in references)
            else:
                refs = () if references is None else (str(references),)
            items = [JudgeItem(answer=s, references=refs, question=row.text) for s in samples]
            return judge.score_many(rubric, items)

        if rubric.needs_reference:
            by_rubric.needs = ("answer", "answers")  # type: ignore[attr-defined]
        return by_rubric

    from llm_finetuning.rewards.registry import get_reward

    spec = get_reward(score.reward)
    fn = spec.build(judge) if spec.kind == "judge" else spec.fn

    def by_reward(row: PromptRow, samples: list[str]) -> list[float]:
        columns = {name: [value] * len(samples) for name, value in row.columns.items()}
        values = fn(
            prompts=[row.messages] * len(samples),
            completions=[[{"role": "assistant", "content": s}] for s in samples],
            completion_ids=[[] for _ in samples],
            trainer_state=None,
            **columns,
        )
        return [float(v) for v in values]

    by_reward.needs = spec.references  # type: ignore[attr-defined]
    return by_reward


def check_columns(scorer: Scorer, rows: list[PromptRow]) -> None:
    """Every row has a column the scorer reads (a reference answer), or the run stops before any request."""
    needs = getattr(scorer, "needs", ())
    if not needs:
        return
    for row in rows:
        if not any(row.columns.get(name) is not None for name in needs):
            raise ConfigError(
                f"{row.where}: the score needs a reference column ({' or '.join(needs)}), absent from this row"
            )


def run_distill(
    task: DistillTask, teacher: Teacher, rows: list[PromptRow], scorer: Scorer | None, stats: TaskStats
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stats.inputs = len(rows)

    def sample(row: PromptRow) -> tuple[list[str | None], list[float] | None]:
        samples = [teacher.ask(row.messages, tag=f"distill/{k}") for k in range(task.samples)]
        texts = [s for s in samples if s]
        if scorer is None or not texts:
            return samples, None
        return samples, scorer(row, texts)

    results = map_concurrently(teacher, rows, sample)
    rows_out, pairs = [], []
    sampled = accepted_total = 0
    for row, (samples, scores) in zip(rows, results, strict=True):
        indexed = [(k, s) for k, s in enumerate(samples) if s]
        sampled += len(indexed)
        if not indexed:
            stats.drop("no_sample")
            continue
        values = scores if scores is not None else [0.0] * len(indexed)
        scored = [(k, s, v) for (k, s), v in zip(indexed, values, strict=True)]
        accepted = [item for item in scored if task.min_score is None or item[2] >= task.min_score]
        if len(accepted) < len(scored):
            stats.drop("below_min_score", len(scored) - len(accepted))
        if not accepted:
            stats.drop("no_sample_accepted")
            continue
        accepted_total += len(accepted)
        best_first = sorted(accepted, key=lambda item: (-item[2], item[0]))
        kept = best_first[:1] if task.keep == "best" else accepted  # unscored: all level, so the first
        base = {"teacher": teacher.model, "task": "distill", "template": "direct", "seed": row.where}
        for k, text, value in kept:
            provenance = {**base, "sample": k, "samples": len(samples)}
            if scores is not None:
                provenance["score"] = value
                provenance["scores"] = [v for _, _, v in scored]
            rows_out.append(
                {"messages": [*row.messages, {"role": "assistant", "content": text}], "provenance": provenance}
            )
        if task.preference_output is not None and scores is not None:
            worst = min(scored, key=lambda item: (item[2], -item[0]))
            best = best_first[0]
            if best[2] > worst[2]:
                pairs.append(
                    {
                        "prompt": row.messages,
                        "chosen": [{"role": "assistant", "content": best[1]}],
                        "rejected": [{"role": "assistant", "content": worst[1]}],
                        "provenance": {**base, "chosen_score": best[2], "rejected_score": worst[2]},
                    }
                )
            else:
                stats.drop("pair_level")
    stats.rows = len(rows_out)
    stats.extra.update(
        samples=sampled, accepted=accepted_total, acceptance_rate=accepted_total / sampled if sampled else None
    )
    if task.preference_output is not None:
        stats.extra["pairs"] = len(pairs)
    return rows_out, pairs
