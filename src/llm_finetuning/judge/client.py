"""The judge client: one OpenAI-compatible endpoint, called concurrently, politely and robustly.

Per request: the on-disk cache first; then the run's budget; then HTTP attempts with exponential backoff and
jitter on 429/5xx/timeouts/connection errors (honouring `Retry-After`), none on other 4xx. Per judgement: a
reply that does not parse, or a request that failed for good, gives the configured fallback score; failures are
counted (`stats`) and logged as a warning at the first and then every `warn_every`-th, never raised.

The API key is read once, from the environment variable the config names; it lives only in the request headers
and is never logged, nor are request bodies.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.data.cache import cache_root
from llm_finetuning.errors import UserError
from llm_finetuning.judge.cache import JudgeCache, cache_key
from llm_finetuning.judge.rubrics import JudgeItem, Messages, Rubric
from llm_finetuning.judge.stats import JudgeStats
from llm_finetuning.judge.transport import backoff_delay, is_loopback, opener_for, post_chat, redact

logger = logging.getLogger(__name__)

Scorer = Callable[[Rubric, JudgeItem], "float | None"]


class JudgeFailed(Exception):
    """A request that gave no reply, for good (after its retries, or refused by the budget)."""


class JudgeClient:
    """Scores completions with an LLM judge described by a `JudgeConfig`.

    `cache_dir` replaces the default cache directory when `config.cache` is `true` (e.g. a run's own folder).
    `sleep` and `rng` are the waiting and jitter sources (tests pass their own to observe the backoff).
    """

    def __init__(
        self,
        config: JudgeConfig,
        *,
        cache_dir: str | Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.stats = JudgeStats()
        self.url = f"{config.base_url}/chat/completions"
        self._headers = _auth_headers(config)
        self._opener = opener_for(self.url)
        self._sleep, self._rng = sleep, rng or random.Random()
        self._budget_lock = threading.Lock()
        self._budget_warned = False
        self._cache = _open_cache(config, cache_dir)
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="llmft-judge")
        self._scorer: Scorer = self._score_with_rubric
        if config.backend != "openai":
            from llm_finetuning.judge.backends import make_scorer  # the optional packages load only when asked for

            self._scorer = make_scorer(config.backend, self)
        logger.info(
            "LLM judge: model `%s` at %s (backend %s, %d in flight, cache %s)",
            config.model,
            redact(config.base_url),
            config.backend,
            config.max_concurrency,
            self._cache.path if self._cache else "off",
        )

    def __repr__(self) -> str:  # never the headers
        return f"JudgeClient(model={self.config.model!r}, base_url={redact(self.config.base_url)!r})"

    # ------------------------------------------------------------------------------------------- scoring
    def score_many(self, rubric: Rubric, items: Sequence[JudgeItem]) -> list[float]:
        """One score in [0, 1] per item (the fallback score where judging failed), judged concurrently up to
        `max_concurrency`; identical items are judged once."""
        futures = {item: self._pool.submit(self.score, rubric, item) for item in dict.fromkeys(items)}
        return [futures[item].result() for item in items]

    def score(self, rubric: Rubric, item: JudgeItem) -> float:
        """The score of one item in [0, 1], or the fallback score when judging fails. Never raises for a
        failing judge."""
        self.stats.add(requests=1)
        if rubric.needs_reference and not item.references:
            return self._fallback("the row has no reference answer")
        try:
            value = self._scorer(rubric, item)
        except JudgeFailed as failure:
            return self._fallback(str(failure))
        except Exception as error:  # noqa: BLE001 - an optional backend's own errors must not stop training
            if self.config.backend == "openai":
                raise
            self.stats.add(failures=1)
            logger.debug("judge backend %s failed", self.config.backend, exc_info=True)
            return self._fallback(f"{self.config.backend} raised {type(error).__name__}")
        if value is None:
            self.stats.add(failures=1)
            return self._fallback("the judge's reply could not be parsed into a score")
        return value

    def _score_with_rubric(self, rubric: Rubric, item: JudgeItem) -> float | None:
        reply = self.complete(
            rubric.messages(item), accept=lambda text: rubric.parse(text) is not None, tag=_tag(rubric)
        )
        value = rubric.parse(reply)
        if value is None:
            logger.debug("unparseable judge reply (%s): %.200r", rubric.name, reply)
        return value

    # ------------------------------------------------------------------------------------------- requests
    def complete(self, messages: Messages, *, accept: Callable[[str], bool] | None = None, tag: str = "") -> str:
        """The judge's reply to `messages`: from the cache, or from the endpoint (with retries). A reply is cached
        when `accept(reply)` is true (always when `accept` is None). Raises `JudgeFailed` when there is none."""
        key = cache_key(
            base_url=self.config.base_url,
            model=self.config.model,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            tag=tag,
            messages=messages,
        )
        if self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                self.stats.add(cache_hits=1)
                return cached
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        retries = self.config.max_retries
        for attempt in range(retries + 1):
            if not self._take_call():
                self.stats.add(budget_refusals=1)
                raise JudgeFailed(f"the budget of {self.config.budget} judge calls is spent")
            outcome = post_chat(self._opener, self.url, body, self._headers, self.config.timeout_s)
            if outcome.text is not None:
                self.stats.add(prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens)
                if self._cache is not None and (accept is None or accept(outcome.text)):
                    self._cache.put(key, outcome.text)
                return outcome.text
            self.stats.add(failures=1)
            logger.debug("judge attempt %d/%d failed: %s", attempt + 1, retries + 1, outcome.error)
            if not outcome.retryable:
                hint = ""
                if outcome.error in ("HTTP 401", "HTTP 403"):
                    hint = f"; check the API key in `{self.config.api_key_env}` (judge.api_key_env)"
                raise JudgeFailed(f"{outcome.error} from {redact(self.url)} (not retried{hint})")
            if attempt == retries:
                break
            self.stats.add(retries=1)
            self._sleep(
                backoff_delay(attempt, self.config.backoff_s, self.config.max_backoff_s, outcome.retry_after, self._rng)
            )
        raise JudgeFailed(f"{outcome.error} from {redact(self.url)} after {retries + 1} attempts")

    def _take_call(self) -> bool:
        """Count one HTTP request against the budget; False (and a one-time warning) once it is spent."""
        with self._budget_lock:
            budget = self.config.budget
            if budget is not None and self.stats.calls >= budget:
                if not self._budget_warned:
                    self._budget_warned = True
                    logger.warning(
                        "LLM judge: the budget of %d calls (judge.budget) is spent; every further judgement gets "
                        "the fallback score %s",
                        budget,
                        self.config.fallback_score,
                    )
                return False
            self.stats.add(calls=1)
            return True

    def _fallback(self, reason: str) -> float:
        count = self.stats.add(fallbacks=1)["fallbacks"]
        if count == 1 or count % self.config.warn_every == 0:
            snapshot = self.stats.snapshot()
            logger.warning(
                "LLM judge: %d of %d judgements so far got the fallback score %s (%d failed attempts, %d refused by "
                "the budget). Latest: %s",
                count,
                snapshot["requests"],
                self.config.fallback_score,
                snapshot["failures"],
                snapshot["budget_refusals"],
                reason,
            )
        return self.config.fallback_score

    # ------------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Wait for judgements in flight and release the threads and the cache file."""
        self._pool.shutdown(wait=True)
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tag(rubric: Rubric) -> str:
    return f"{rubric.name}/v{rubric.version}"


def _auth_headers(config: JudgeConfig) -> dict[str, str]:
    """The Authorization header, from the environment variable the config names."""
    if config.api_key_env is None:
        return {}
    key = os.environ.get(config.api_key_env, "").strip()
    if not key:
        if is_loopback(config.base_url):
            return {}  # a local server (`llmft serve` on loopback) needs no key
        raise UserError(
            f"the LLM judge at {redact(config.base_url)} needs an API key: export it in the environment variable "
            f"`{config.api_key_env}`, or set `judge.api_key_env` to the variable that holds it (e.g. "
            "`OPENAI_API_KEY`), or to `null` if the endpoint takes no key"
        )
    if config.base_url.startswith("http://") and not is_loopback(config.base_url):
        logger.warning(
            "LLM judge: the API key from `%s` is sent unencrypted to %s; prefer an https:// endpoint",
            config.api_key_env,
            redact(config.base_url),
        )
    return {"Authorization": f"Bearer {key}"}


def _open_cache(config: JudgeConfig, cache_dir: str | Path | None) -> JudgeCache | None:
    if config.cache is False:
        return None
    if config.cache is True:
        directory = Path(cache_dir) if cache_dir is not None else cache_root() / "judge"
    else:
        directory = Path(config.cache).expanduser()
    try:
        return JudgeCache(directory)
    except (OSError, sqlite3.Error) as error:
        logger.warning("LLM judge: cache at %s unusable (%s); judging without a cache", directory, error)
        return None
