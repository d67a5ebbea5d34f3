"""LLM judges over any OpenAI-compatible endpoint: the client (concurrency, retries, budget, cache, fallback),
the rubric prompts and parsers, and optional deepeval/evidently backends."""

from llm_finetuning.judge.client import JudgeClient, JudgeFailed
from llm_finetuning.judge.rubrics import RUBRICS, JudgeItem, Rubric
from llm_finetuning.judge.stats import JudgeStats, judge_metrics

__all__ = ["RUBRICS", "JudgeClient", "JudgeFailed", "JudgeItem", "JudgeStats", "Rubric", "judge_metrics"]
