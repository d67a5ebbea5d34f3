"""Optional judge backends: deepeval's G-Eval metric and evidently's LLM-judge template.

Each uses its library for the prompt and the parsing but sends every request through the `JudgeClient`, so the
endpoint, key, retries, budget, cache and statistics are the same as with the built-in rubrics. The packages are
imported only when the backend is chosen; a missing one is a `UserError` that says what to install.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
from typing import TYPE_CHECKING, Any

from llm_finetuning.errors import UserError
from llm_finetuning.judge.rubrics import JudgeItem, Rubric, format_references

if TYPE_CHECKING:
    from llm_finetuning.judge.client import JudgeClient, Scorer


def _require(package: str, backend: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as error:
        missing = isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == package
        problem = "which is not installed" if missing else f"which is installed but fails to import ({error})"
        raise UserError(
            f"`judge.backend: {backend}` needs the `{package}` package, {problem}. Install the extra "
            f"(`pip install 'llm-finetuning[{backend}]'`, or `pip install -U {package}`), or use "
            "`judge.backend: openai`, which needs nothing more"
        ) from None


def make_scorer(backend: str, client: JudgeClient) -> Scorer:
    """The `(rubric, item) -> score in [0, 1] or None` function of `backend`."""
    if backend == "deepeval":
        return DeepEvalScorer(client)
    if backend == "evidently":
        return EvidentlyScorer(client)
    raise ValueError(f"unknown judge backend `{backend}`")


def _input_text(rubric: Rubric, item: JudgeItem) -> str:
    return item.question or "(no question given)"


# ----------------------------------------------------------------------------------------------- deepeval
class DeepEvalScorer:
    """deepeval's `GEval` with the rubric's criteria; its judge model is the client (a `DeepEvalBaseLLM`)."""

    def __init__(self, client: JudgeClient) -> None:
        # deepeval reports usage to its authors unless told not to; a training run should not phone home.
        os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "1")
        _require("deepeval", "deepeval")
        from deepeval.models import DeepEvalBaseLLM

        class ClientModel(DeepEvalBaseLLM):
            def __init__(self) -> None:
                super().__init__(client.config.model)

            def load_model(self, *args: Any, **kwargs: Any) -> Any:
                return client

            def generate(self, prompt: str, *args: Any, **kwargs: Any) -> str:
                return client.complete([{"role": "user", "content": prompt}], tag="deepeval")

            async def a_generate(self, prompt: str, *args: Any, **kwargs: Any) -> str:
                return await asyncio.to_thread(self.generate, prompt)

            def get_model_name(self, *args: Any, **kwargs: Any) -> str:
                return client.config.model

        self._model = ClientModel()
        self._local = threading.local()  # a GEval metric keeps per-measurement state: one per thread

    def _metric(self, rubric: Rubric) -> Any:
        metrics = self._local.__dict__.setdefault("metrics", {})
        if rubric.name not in metrics:
            from deepeval import test_case
            from deepeval.metrics import GEval

            params = getattr(test_case, "SingleTurnParams", None) or test_case.LLMTestCaseParams
            wanted = [params.INPUT, params.ACTUAL_OUTPUT]
            if rubric.needs_reference:
                wanted.append(params.EXPECTED_OUTPUT)
            metrics[rubric.name] = GEval(
                name=rubric.name,
                criteria=rubric.summary,
                evaluation_params=wanted,
                model=self._model,
                async_mode=False,
            )
        return metrics[rubric.name]

    def __call__(self, rubric: Rubric, item: JudgeItem) -> float | None:
        from deepeval.test_case import LLMTestCase

        case = LLMTestCase(
            input=_input_text(rubric, item),
            actual_output=item.answer or "(empty)",
            expected_output=format_references(item.references) if item.references else None,
        )
        metric = self._metric(rubric)
        metric.measure(case)
        score = metric.score
        return None if score is None else min(1.0, max(0.0, float(score)))


# ---------------------------------------------------------------------------------------------- evidently
class EvidentlyScorer:
    """evidently's `BinaryClassificationPromptTemplate` with a 0-1 score, rendered and parsed by evidently."""

    def __init__(self, client: JudgeClient) -> None:
        _require("evidently", "evidently")
        self._client = client
        self._templates: dict[str, Any] = {}

    def _template(self, rubric: Rubric) -> Any:
        if rubric.name not in self._templates:
            from evidently.llm.templates import BinaryClassificationPromptTemplate

            self._templates[rubric.name] = BinaryClassificationPromptTemplate(
                criteria=f"{rubric.summary} The text holds the input question, the expected output (when given) "
                "and the actual output.",
                target_category="good",
                non_target_category="bad",
                include_score=True,
                score_range=(0.0, 1.0),
                include_category=True,
            )
        return self._templates[rubric.name]

    def __call__(self, rubric: Rubric, item: JudgeItem) -> float | None:
        template = self._template(rubric)
        text = f"Input:\n{_input_text(rubric, item)}\n\nActual output:\n{item.answer or '(empty)'}"
        if item.references:
            text += f"\n\nExpected output:\n{format_references(item.references)}"
        messages = [{"role": m.role, "content": m.content} for m in template.get_messages({"input": text})]
        reply = self._client.complete(messages, tag=f"evidently/{rubric.name}/v{rubric.version}")
        try:
            parsed = template.get_parser()(reply)
        except Exception:  # noqa: BLE001 - evidently's parse error: an unparseable reply
            return None
        score = _float(parsed.get("score")) if isinstance(parsed, dict) else None
        if score is not None and 0 <= score <= 1:
            return score
        category = str(parsed.get("category", "")).lower() if isinstance(parsed, dict) else ""
        return {"good": 1.0, "bad": 0.0}.get(category)


def _float(value: Any) -> float | None:
    """A number, or a number written as a string (evidently's template asks for `"score": "<score here>"`)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
