"""AI feedback (RLAIF): a judge ranks n completions per prompt into preference (DPO, reward model) or KTO rows.

Input rows: `{"prompt": text or messages, "completions": [text, ...]}` (at least two completions).

- `pairwise`: every pair of completions is judged twice, once in each order, so a judge that favours the first
  (or second) position cancels out. A pair whose two verdicts name the same completion is *consistent*: that
  completion wins it; an inconsistent pair or a tie gives each half a win. The agreement rate (consistent pairs
  / judged pairs) says how far the judge can be trusted on this data.
- `scored`: each completion gets a 1-5 score on its own (no order to be biased by).

The best completion becomes `chosen` and the worst `rejected` (a prompt whose best and worst are level is
skipped and counted); for KTO, the best is desirable and the worst undesirable. Every row keeps its provenance:
the judge model, the mode, each completion's wins or score, and the source line.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from llm_finetuning.errors import DataError
from llm_finetuning.judge.client import JudgeClient, JudgeFailed
from llm_finetuning.judge.rubrics import parse_score

logger = logging.getLogger(__name__)

MODES = ("pairwise", "scored")
FORMATS = ("preference", "kto")

_PAIRWISE = (
    "You compare two responses to the same conversation and pick the one that is more helpful, correct and "
    "harmless. Judge the content, not the length or the position. Reply with a JSON object: "
    '{"winner": "A"} or {"winner": "B"}, or {"winner": "tie"} when neither is better.'
)
_SCORED = (
    "You grade one response to a conversation for how helpful, correct and harmless it is, from 1 (worst) to 5 "
    '(best). Reply with a JSON object: {"score": N}.'
)


@dataclass(frozen=True)
class Candidates:
    line: int
    prompt: list[dict[str, str]]
    completions: list[str]


@dataclass
class LabelStats:
    prompts: int = 0
    rows: int = 0
    skipped_level: int = 0
    """Prompts whose best and worst completions scored the same: no preference to learn."""
    pairs: int = 0
    judged_pairs: int = 0
    consistent_pairs: int = 0
    failed_calls: int = 0
    first_position_wins: int = 0
    """Verdicts that named whichever response was shown first (of the decisive ones): the judge's order bias."""
    decisive_verdicts: int = 0

    @property
    def agreement_rate(self) -> float | None:
        return self.consistent_pairs / self.judged_pairs if self.judged_pairs else None

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["agreement_rate"] = self.agreement_rate
        out["first_position_rate"] = (
            self.first_position_wins / self.decisive_verdicts if self.decisive_verdicts else None
        )
        return out


def _messages(value: Any, line: int, path: Path) -> list[dict[str, str]]:
    from llm_finetuning.synth.common import as_messages

    messages = as_messages(value)
    if messages is None:
        raise DataError(f"{path}:{line}: field `prompt` must be text or a list of {{role, content}} messages")
    return messages


def read_candidates(path: str | Path) -> list[Candidates]:
    """The rows of a JSONL file; a bad row stops here, with its line, before any judge call."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    rows = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}:{number}: expected an object with `prompt` and `completions`")
        completions = data.get("completions")
        if (
            not isinstance(completions, list)
            or len(completions) < 2
            or not all(isinstance(c, str) and c.strip() for c in completions)
        ):
            raise DataError(f"{path}:{number}: field `completions` must be a list of at least two non-empty texts")
        rows.append(Candidates(number, _messages(data.get("prompt"), number, source), completions))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _conversation(prompt: list[dict[str, str]]) -> str:
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)


def pairwise_messages(prompt: list[dict[str, str]], first: str, second: str) -> list[dict[str, str]]:
    user = f"Conversation:\n{_conversation(prompt)}\n\nResponse A:\n{first}\n\nResponse B:\n{second}"
    return [{"role": "system", "content": _PAIRWISE}, {"role": "user", "content": user}]


def scored_messages(prompt: list[dict[str, str]], completion: str) -> list[dict[str, str]]:
    user = f"Conversation:\n{_conversation(prompt)}\n\nResponse:\n{completion}"
    return [{"role": "system", "content": _SCORED}, {"role": "user", "content": user}]


_WINNER = re.compile(r'"?winner"?\s*[:=]\s*"?\s*(A|B|tie)\b', re.IGNORECASE)


def parse_winner(reply: str) -> str | None:
    """`A`, `B` or `tie` from `{"winner": ...}` (or a `winner: A` line, or a reply that is just the letter)."""
    found = _WINNER.findall(reply)
    if found:
        word = found[-1].lower()
        return "tie" if word == "tie" else word.upper()
    bare = reply.strip().strip(".*`'\"").lower()
    return {"a": "A", "b": "B", "tie": "tie"}.get(bare)


def _ask(client: JudgeClient, messages: list[dict[str, str]], parse: Any, tag: str) -> Any:
    try:
        reply = client.complete(messages, accept=lambda text: parse(text) is not None, tag=tag)
    except JudgeFailed as exc:
        logger.debug("judge call failed: %s", exc)
        return None
    return parse(reply)


def _pairwise(client: JudgeClient, row: Candidates, pool: ThreadPoolExecutor, stats: LabelStats) -> list[float]:
    pairs = list(combinations(range(len(row.completions)), 2))
    asks = []
    for i, j in pairs:
        for first, second in ((i, j), (j, i)):
            messages = pairwise_messages(row.prompt, row.completions[first], row.completions[second])
            asks.append(pool.submit(_ask, client, messages, parse_winner, "rlaif-pairwise"))
    verdicts = [a.result() for a in asks]
    wins = [0.0] * len(row.completions)
    for k, (i, j) in enumerate(pairs):
        stats.pairs += 1
        forward, backward = verdicts[2 * k], verdicts[2 * k + 1]
        if forward is None or backward is None:
            stats.failed_calls += (forward is None) + (backward is None)
            continue
        stats.judged_pairs += 1
        # Who each verdict names: the forward one showed i first, the backward one j first.
        named = [{"A": i, "B": j}.get(forward), {"A": j, "B": i}.get(backward)]
        for verdict in (forward, backward):
            if verdict in ("A", "B"):
                stats.decisive_verdicts += 1
                stats.first_position_wins += verdict == "A"
        if named[0] == named[1]:
            stats.consistent_pairs += 1
            if named[0] is not None:
                wins[named[0]] += 1.0
                continue
        wins[i] += 0.5
        wins[j] += 0.5
    return wins


def _scored(client: JudgeClient, row: Candidates, pool: ThreadPoolExecutor, stats: LabelStats) -> list[float] | None:
    asks = [
        pool.submit(_ask, client, scored_messages(row.prompt, c), parse_score, "rlaif-scored") for c in row.completions
    ]
    scores = [a.result() for a in asks]
    stats.failed_calls += sum(s is None for s in scores)
    if any(s is None for s in scores):
        return None
    return [float(s) for s in scores]


def label_preferences(
    rows: list[Candidates], client: JudgeClient, mode: str = "pairwise", output_format: str = "preference",
    source: str = "",
) -> tuple[list[dict[str, Any]], LabelStats]:  # fmt: skip
    """Preference (or KTO) rows from the judge's ranking of each row's completions, and the counts."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose {', '.join(MODES)}")
    if output_format not in FORMATS:
        raise ValueError(f"format {output_format!r}: choose {', '.join(FORMATS)}")
    stats = LabelStats()
    out: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=client.config.max_concurrency) as pool:
        for row in rows:
            stats.prompts += 1
            ranked = (_pairwise if mode == "pairwise" else _scored)(client, row, pool, stats)
            if ranked is None:
                continue
            best = max(range(len(ranked)), key=lambda k: (ranked[k], -k))
            worst = min(range(len(ranked)), key=lambda k: (ranked[k], k))
            if ranked[best] == ranked[worst]:
                stats.skipped_level += 1
                continue
            provenance = {
                "judge": client.config.model,
                "mode": mode,
                "wins" if mode == "pairwise" else "scores": ranked,
                "source": f"{source}:{row.line}" if source else row.line,
            }
            chosen = [{"role": "assistant", "content": row.completions[best]}]
            rejected = [{"role": "assistant", "content": row.completions[worst]}]
            if output_format == "preference":
                out.append({"prompt": row.prompt, "chosen": chosen, "rejected": rejected, "provenance": provenance})
            else:
                out.append({"prompt": row.prompt, "completion": chosen, "label": True, "provenance": provenance})
                out.append({"prompt": row.prompt, "completion": rejected, "label": False, "provenance": provenance})
            stats.rows += 1
    return out, stats


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(target)  # a crash never leaves half a file under the final name
