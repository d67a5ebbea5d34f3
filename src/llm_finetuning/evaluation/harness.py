"""A bridge to lm-evaluation-harness (optional extra `eval-harness`): run its tasks, or your own task YAMLs
(`include`), on a model already loaded by the toolkit (a run's adapter, merged model or GGUF read-back).

lm-eval is imported only here and only when called, so the toolkit works without it.
"""

from __future__ import annotations

import logging
from typing import Any

from llm_finetuning.errors import UserError

logger = logging.getLogger(__name__)


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise UserError(
            "lm-evaluation-harness is not installed: `pip install 'llm-finetuning[eval-harness]'`"
        ) from None
    return lm_eval


def run_harness(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    include: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on the loaded model; returns its results (`results`, `configs`, `versions`,
    `n-samples`...) with per-sample logs under `samples`. `include` is a folder of task YAMLs; with it, only
    those and lm-eval's own tasks are known. Unknown task names are a `UserError` naming the close ones."""
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = [t.strip() for t in tasks if t.strip()]
    # Indexing lm-eval's own task catalogue takes seconds; tasks all found in `include` do not need it.
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or any(name not in manager.all_tasks for name in names):
        manager = TaskManager(include_path=include) if include else TaskManager()
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        import difflib

        hints = {name: difflib.get_close_matches(name, manager.all_tasks, n=3) for name in unknown}
        detail = "; ".join(f"`{n}`" + (f" (close: {', '.join(h)})" if h else "") for n, h in hints.items())
        raise UserError(f"unknown lm-eval task(s): {detail}. Give a folder of your own with --harness-include")
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    logger.info("lm-eval %s: %s", getattr(lm_eval, "__version__", "?"), ", ".join(names))
    results = lm_eval.simple_evaluate(
        model=wrapped,
        tasks=names,
        limit=limit,
        task_manager=manager,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=0,  # standard errors by bootstrap are slow; lm-eval still reports its closed-form ones
    )
    if results is None:  # only on non-main ranks of a distributed run
        return {}
    return results
