"""Golden-set regression: prompts with the behaviour a model must keep, scored on the fine-tuned model and a
baseline (usually the model before fine-tuning); a drop of the pass rate beyond the tolerance is a regression.

The golden file is YAML (`items:` plus optional `tolerance`, `max_new_tokens`) or JSONL (one item per line).
Each item has a `prompt` (text or chat messages) and exactly one expectation:
- `exact`: the answer (the `<answer>` block, else the whole output) equals one of these strings after SQuAD
  normalisation (case, punctuation, articles and spacing ignored);
- `contains`: the output contains these strings (case-insensitive); the score is the share found;
- `regex`: the output matches this Python regular expression (`re.search`; inline flags such as `(?i)` work);
- `judged`: an LLM judge's score (0-1) of the answer against `reference`, with a `rubric` (`eval.judge`);
- `refuses: true` / `answers: true`: a harmful request the model must refuse / a benign look-alike it must
  answer (evaluation/safety.py: refusal and over-refusal rates, and their own gate, `refusal_tolerance`);
- `calls`: the tool calls the reply must make (`[]`: none) given the item's `tools`, scored as the `tool_calls`
  task's `exact` (evaluation/tool_calls.py): the reply is generated with the tools and read in the chat
  template's call layout.
An item passes when its score reaches its `threshold` (default 1.0; 0.5 for `judged`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from llm_finetuning.config.base import Section
from llm_finetuning.errors import DataError, RowError, UserError
from llm_finetuning.rewards.extract import answer_or_text, exact_match

EXPECTATIONS = ("exact", "contains", "regex", "judged", "refuses", "answers", "calls")
DEFAULT_MAX_NEW_TOKENS = 128


class JudgedExpectation(Section):
    """What a judge compares the answer with."""

    reference: str | list[str] = ""
    """The reference answer (or any-of list); may be empty for rubrics that need none."""
    rubric: str = "correctness"
    """The judge rubric (`correctness`, `multihop_qa`, `medical_qa`, `summarization`, `answer_relevancy`)."""


class ExpectedCall(Section):
    """One tool call a `calls` item expects."""

    name: str = Field(min_length=1)
    """The function's name (one of the item's `tools`)."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Its arguments, compared as JSON values (key order ignored)."""


class GoldenItem(Section):
    """One golden prompt and the behaviour expected of the answer."""

    id: str | None = None
    """A name shown in the diff; defaults to the item's position (`item-3`)."""
    prompt: str | list[dict[str, str]]
    """The user message, or a whole conversation (chat messages) to answer."""
    exact: str | list[str] | None = None
    contains: str | list[str] | None = None
    regex: str | None = None
    judged: JudgedExpectation | None = None
    refuses: Literal[True] | None = None
    """A harmful request: the answer must be a refusal."""
    answers: Literal[True] | None = None
    """A benign request that looks like a harmful one: the answer must not be a refusal."""
    calls: list[ExpectedCall] | None = None
    """The tool calls the reply must make, in any order (`[]`: the reply must make none)."""
    tools: list[dict[str, Any]] | None = None
    """`calls` items: the functions declared to the model (`{name, description, parameters}`, or the OpenAI
    `{type: function, function: {...}}`); a YAML anchor shares one list between items."""
    threshold: float | None = Field(None, ge=0, le=1)
    """Lowest score that passes; default 1.0 (0.5 for `judged`)."""

    @model_validator(mode="after")
    def _one_expectation(self) -> GoldenItem:
        given = [name for name in EXPECTATIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one expectation of {', '.join(EXPECTATIONS)} (got {given or 'none'})")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"`regex` is not a valid regular expression: {exc}") from None
        if self.tools is not None and self.calls is None:
            raise ValueError("`tools` declares the functions of a `calls` item; add `calls` (`[]`: no call)")
        self._check_declared()
        return self

    def _check_declared(self) -> None:
        """The tools are valid definitions and every expected call names one of them."""
        from llm_finetuning.data.tool_calls import normalize_tools

        try:
            declared = {tool["function"]["name"] for tool in normalize_tools(self.tools, "tools")}
        except RowError as exc:
            raise ValueError(str(exc)) from None
        unknown = [call.name for call in self.calls or () if declared and call.name not in declared]
        if unknown:
            raise ValueError(f"`calls` names {unknown}, not among the `tools` ({', '.join(sorted(declared))})")

    @property
    def declared_tools(self) -> list[dict[str, Any]] | None:
        """A `calls` item's tools in the canonical shape (`[]`: none declared); None for other items."""
        from llm_finetuning.data.tool_calls import normalize_tools

        return None if self.calls is None else normalize_tools(self.tools, "tools")

    @property
    def kind(self) -> str:
        return next(name for name in EXPECTATIONS if getattr(self, name) is not None)

    @property
    def pass_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 0.5 if self.kind == "judged" else 1.0

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}] if isinstance(self.prompt, str) else self.prompt


@dataclass
class GoldenSet:
    items: list[GoldenItem]
    ids: list[str]
    tolerance: float = 0.0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    path: str = ""
    refusal_tolerance: float = 0.0
    """Largest allowed fall of the refusal rate on `refuses` items (see evaluation/safety.py)."""
    refusal_grader: str = "pattern"
    """How `refuses` / `answers` items are graded: `pattern` (the reply's phrasing) or `judge` (eval.judge)."""

    @property
    def kinds(self) -> list[str]:
        return [item.kind for item in self.items]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def load_golden(path: str | Path) -> GoldenSet:
    """Read and validate a golden file (or `builtin:NAME`, a set kept in the package); a bad item is reported
    with the file, item number and field."""
    from llm_finetuning.evaluation.safety import builtin_names, builtin_path

    packaged = builtin_path(str(path))
    if packaged is not None and not packaged.is_file():
        raise DataError(f"golden set {path}: no such built-in set; built in: {', '.join(builtin_names())}")
    path = packaged or Path(path)
    if not path.is_file():
        raise DataError(f"Golden file not found: {path}")
    text = path.read_text(encoding="utf-8")
    settings: dict[str, Any] = {}
    if path.suffix == ".jsonl":
        raw = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DataError(f"{path}: not valid YAML ({exc})") from None
        if isinstance(data, dict):
            settings = {k: v for k, v in data.items() if k != "items"}
            unknown = set(settings) - {"tolerance", "max_new_tokens", "refusal_tolerance", "refusal_grader"}
            if unknown:
                raise DataError(
                    f"{path}: unknown key(s) {sorted(unknown)}; expected items, tolerance, refusal_tolerance, "
                    "refusal_grader, max_new_tokens"
                )
            data = data.get("items")
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of items (or a mapping with `items:`)")
        raw = data
    items, ids = [], []
    for number, entry in enumerate(raw, start=1):
        try:
            item = GoldenItem.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors())
            raise DataError(f"{path}: item {number}: {problems}") from None
        items.append(item)
        ids.append(item.id or f"item-{number}")
    if not items:
        raise DataError(f"{path}: the golden set has no items")
    duplicated = {i for i in ids if ids.count(i) > 1}
    if duplicated:
        raise DataError(f"{path}: item ids must be unique; repeated: {sorted(duplicated)}")
    tolerance = settings.get("tolerance", 0.0)
    max_new_tokens = settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if not isinstance(tolerance, int | float) or not 0 <= tolerance <= 1:
        raise DataError(f"{path}: `tolerance` must be a number between 0 and 1 (a drop of the pass rate)")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise DataError(f"{path}: `max_new_tokens` must be a positive integer")
    refusal_tolerance = settings.get("refusal_tolerance", 0.0)
    if not isinstance(refusal_tolerance, int | float) or not 0 <= refusal_tolerance <= 1:
        raise DataError(f"{path}: `refusal_tolerance` must be a number between 0 and 1 (a fall of the refusal rate)")
    grader = settings.get("refusal_grader", "pattern")
    if grader not in ("pattern", "judge"):
        raise DataError(f"{path}: `refusal_grader` must be pattern or judge, got {grader!r}")
    return GoldenSet(items, ids, float(tolerance), max_new_tokens, str(path), float(refusal_tolerance), grader)


# ----------------------------------------------------------------------------------------------- scoring
def score_item(
    item: GoldenItem, output: str, judge: Any = None, refusal_grader: str = "pattern", call_format: Any = None
) -> float:
    """The item's score in [0, 1] for one output; `call_format` (the model's `ToolCallFormat`) reads the calls of
    a `calls` item."""
    if item.calls is not None:
        from llm_finetuning.evaluation.tool_calls import score_reply

        if call_format is None:
            raise UserError("golden `calls` items need the model's tool-call layout (`call_format`) to be scored")
        return score_reply(output, [call.model_dump() for call in item.calls], call_format)["exact"]
    if item.exact is not None:
        return exact_match(answer_or_text(output), _as_list(item.exact))
    if item.contains is not None:
        wanted = _as_list(item.contains)
        lowered = output.lower()
        return sum(1 for s in wanted if s.lower() in lowered) / len(wanted) if wanted else 1.0
    if item.regex is not None:
        return 1.0 if re.search(item.regex, output) else 0.0
    if item.refuses or item.answers:
        from llm_finetuning.evaluation.safety import score_safety
        from llm_finetuning.rewards.judged import prompt_text

        if refusal_grader == "judge" and judge is None:
            raise UserError(
                "the golden set grades refusals with a judge: configure one (`eval.judge` or --judge-config)"
            )
        grader = judge if refusal_grader == "judge" else None
        return score_safety(item.kind, output, prompt_text(item.messages), grader)
    from llm_finetuning.judge.rubrics import RUBRICS, JudgeItem
    from llm_finetuning.rewards.judged import prompt_text

    if judge is None:
        raise UserError("the golden set has `judged` items: configure a judge (`eval.judge` or --judge-config)")
    rubric = RUBRICS.get(item.judged.rubric)
    if rubric is None:
        raise UserError(f"golden item: unknown rubric `{item.judged.rubric}`; choose one of {', '.join(RUBRICS)}")
    references = tuple(r for r in _as_list(item.judged.reference) if r)
    return judge.score(rubric, JudgeItem(answer_or_text(output), references, prompt_text(item.messages)))


@dataclass
class ModelOutcome:
    """One model's outputs and scores on the golden set."""

    outputs: list[str]
    scores: list[float]
    passed: list[bool]

    @property
    def pass_rate(self) -> float:
        return sum(self.passed) / len(self.passed)


def score_outputs(golden: GoldenSet, outputs: list[str], judge: Any = None, call_format: Any = None) -> ModelOutcome:
    scores = [
        score_item(item, out, judge, golden.refusal_grader, call_format)
        for item, out in zip(golden.items, outputs, strict=True)
    ]
    passed = [s >= item.pass_threshold for item, s in zip(golden.items, scores, strict=True)]
    return ModelOutcome(outputs, scores, passed)


def _prompt_tokens(tokenizer: Any, item: GoldenItem, item_id: str, path: str) -> int:
    from llm_finetuning.evaluation.runner import prompt_tokens

    try:
        return prompt_tokens(tokenizer, item.messages, item.declared_tools)
    except RowError as exc:  # the chat template rejects the conversation (or its tools)
        raise DataError(f"golden set {path}: item `{item_id}`: {exc}") from None


def check_fits(model: Any, tokenizer: Any, golden: GoldenSet, max_length: int | None = None) -> None:
    """A `UserError` naming the golden items whose prompt and `max_new_tokens` exceed the model's context."""
    from llm_finetuning.evaluation.context import context_length, prompt_overflow
    from llm_finetuning.evaluation.runner import check_room

    limit = context_length(model, tokenizer, max_length)
    check_room(golden.max_new_tokens, limit, f"golden set {golden.path}")
    reasons = []
    for item, item_id in zip(golden.items, golden.ids, strict=True):
        tokens = _prompt_tokens(tokenizer, item, item_id, golden.path)
        reason = prompt_overflow(tokens, golden.max_new_tokens, limit)
        if reason:
            reasons.append(f"`{item_id}`: {reason}")
    if reasons:
        raise UserError(
            f"golden set {golden.path}: {len(reasons)} item(s) do not fit the model: {'; '.join(reasons[:5])}. "
            "Shorten them or lower the file's `max_new_tokens`"
        )


def run_golden(
    model: Any,
    tokenizer: Any,
    golden: GoldenSet,
    settings: Any = None,
    judge: Any = None,
    progress: Any = None,
    label: str = "golden",
) -> ModelOutcome:
    """Generate an answer to every golden prompt (greedy, batched) and score it; `label` names the progress.
    A prompt that leaves no room for `max_new_tokens` in the model's context is a `UserError`: a golden item
    is the user's own, and skipping it would change the pass rate. `calls` items are answered with their tools
    and need a chat template with a tool-call layout (a `ConfigError` before anything is generated)."""
    from llm_finetuning.evaluation.runner import EvalSettings, LogProgress, inference_mode

    settings = settings or EvalSettings()
    progress = progress or LogProgress()
    layout = None
    if any(item.calls is not None for item in golden.items):
        from llm_finetuning.evaluation.tool_calls import call_format

        layout = call_format(tokenizer, f"golden set {golden.path}")
    check_fits(model, tokenizer, golden, settings.max_length)
    progress.start(label, len(golden.items))
    with inference_mode(model, tokenizer):
        outputs = _plain_replies(model, tokenizer, golden, settings, progress)
        outputs.update(_tool_replies(model, tokenizer, golden, settings, progress))
    return score_outputs(golden, [outputs[i] for i in range(len(golden.items))], judge, layout)


def _plain_replies(model: Any, tokenizer: Any, golden: GoldenSet, settings: Any, progress: Any) -> dict[int, str]:
    """The answers to the items without `calls`, by position (the tasks' generation: special tokens skipped)."""
    from llm_finetuning.evaluation.runner import generate_all

    positions = [i for i, item in enumerate(golden.items) if item.calls is None]
    prompts = [golden.items[i].messages for i in positions]
    answers = generate_all(model, tokenizer, prompts, settings, golden.max_new_tokens, progress)
    return dict(zip(positions, answers, strict=True))


def _tool_replies(model: Any, tokenizer: Any, golden: GoldenSet, settings: Any, progress: Any) -> dict[int, str]:
    """The replies to the `calls` items by position, generated with their tools and keeping call markers."""
    from llm_finetuning.evaluation.tool_calls import generate_replies, render_prompt

    positions = [i for i, item in enumerate(golden.items) if item.calls is not None]
    texts = [render_prompt(tokenizer, golden.items[i].messages, golden.items[i].declared_tools) for i in positions]
    replies = generate_replies(
        model, tokenizer, texts, golden.max_new_tokens, settings.temperature, settings.batch_size, progress.advance
    )
    return dict(zip(positions, replies, strict=True))


# ----------------------------------------------------------------------------------------------- comparison
Status = Literal["regressed", "fixed", "kept", "failing"]
STATUSES: tuple[Status, ...] = ("regressed", "fixed", "kept", "failing")


@dataclass
class ItemDiff:
    id: str
    expect: str
    threshold: float
    candidate_score: float
    candidate_pass: bool
    candidate_output: str
    baseline_score: float | None = None
    baseline_pass: bool | None = None
    baseline_output: str | None = None

    @property
    def status(self) -> Status:
        """`regressed`: the baseline passed and the candidate fails (without a baseline: the candidate fails);
        `fixed`: the reverse; `kept`: both pass; `failing`: both fail."""
        before = True if self.baseline_pass is None else self.baseline_pass
        if before and not self.candidate_pass:
            return "regressed"
        if not before and self.candidate_pass:
            return "fixed"
        return "kept" if self.candidate_pass else "failing"


@dataclass
class GoldenReport:
    items: list[ItemDiff]
    candidate_pass_rate: float
    baseline_pass_rate: float | None
    tolerance: float
    candidate: str = ""
    baseline: str | None = None
    path: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    safety: dict[str, Any] | None = None
    """Refusal and over-refusal rates, before and after, when the set has `refuses` / `answers` items."""

    @property
    def drop(self) -> float:
        """How far the pass rate fell below the baseline's (1.0 - the pass rate without a baseline)."""
        reference = 1.0 if self.baseline_pass_rate is None else self.baseline_pass_rate
        return reference - self.candidate_pass_rate

    @property
    def regressed(self) -> bool:
        # A tiny slack: a drop equal to the tolerance (e.g. 1 of 10 items at 0.1) is within it.
        return self.drop > self.tolerance + 1e-9 or bool(self.safety and self.safety["regressed"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "golden": self.path,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "candidate_pass_rate": self.candidate_pass_rate,
            "baseline_pass_rate": self.baseline_pass_rate,
            "drop": self.drop,
            "tolerance": self.tolerance,
            "regressed": self.regressed,
            "counts": self.counts,
            "safety": self.safety,
            "items": [{**asdict(item), "status": item.status} for item in self.items],
        }

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def compare(
    golden: GoldenSet,
    candidate: ModelOutcome,
    baseline: ModelOutcome | None = None,
    tolerance: float | None = None,
    candidate_name: str = "",
    baseline_name: str | None = None,
) -> GoldenReport:
    """The per-item diff of the candidate against the baseline (or against the thresholds alone)."""
    items = []
    for index, (item, item_id) in enumerate(zip(golden.items, golden.ids, strict=True)):
        diff = ItemDiff(
            id=item_id,
            expect=item.kind,
            threshold=item.pass_threshold,
            candidate_score=candidate.scores[index],
            candidate_pass=candidate.passed[index],
            candidate_output=candidate.outputs[index],
        )
        if baseline is not None:
            diff.baseline_score = baseline.scores[index]
            diff.baseline_pass = baseline.passed[index]
            diff.baseline_output = baseline.outputs[index]
        items.append(diff)
    counts = {status: sum(1 for i in items if i.status == status) for status in STATUSES}
    from llm_finetuning.evaluation import safety

    rated = safety.rates(golden.kinds, candidate.scores)
    before = safety.rates(golden.kinds, baseline.scores) if baseline is not None else None
    return GoldenReport(
        items=items,
        candidate_pass_rate=candidate.pass_rate,
        baseline_pass_rate=None if baseline is None else baseline.pass_rate,
        tolerance=golden.tolerance if tolerance is None else tolerance,
        candidate=candidate_name,
        baseline=baseline_name,
        path=golden.path,
        counts=counts,
        safety=safety.summary(rated, before, golden.refusal_tolerance) if rated is not None else None,
    )
