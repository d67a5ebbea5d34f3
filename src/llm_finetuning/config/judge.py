"""The judge section: which OpenAI-compatible endpoint scores completions for the judged rewards, and how
politely and how robustly it is called (concurrency, retries, timeouts, budget, cache, fallback)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llm_finetuning.config.base import Section

# An environment variable name, so a pasted key (`sk-...`, base64 with `-`/`+`/`/`) is refused.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JudgeConfig(Section):
    """An LLM judge behind any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, TGI, Ollama,
    `llmft serve`...). The judge sees the extracted answer and the reference, never the reasoning."""

    # A key pasted into `api_key_env` by mistake must not be echoed by pydantic's error text.
    model_config = ConfigDict(**Section.model_config, hide_input_in_errors=True)

    backend: Literal["openai", "deepeval", "evidently"] = "openai"
    """`openai`: the toolkit's own rubric prompts over plain HTTP (no extra dependency). `deepeval`: deepeval's
    G-Eval metric, `evidently`: evidently's LLM-judge template (each needs its package installed); both still send
    their requests through this endpoint, with the same retries, budget and cache."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """Base URL of the endpoint, including the version path (`https://api.openai.com/v1`,
    `http://127.0.0.1:8000/v1` for `llmft serve`); requests go to `<base_url>/chat/completions`."""
    model: str = Field(min_length=1)
    """Model name sent with every request (part of the cache key: another judge model never reuses scores)."""
    api_key_env: str | None = "LLMFT_JUDGE_API_KEY"
    """Name of the environment variable holding the API key (the key itself never goes in the config, the run
    directory or the logs), e.g. `OPENAI_API_KEY` for OpenAI. The default is a name of the toolkit's own, so a key
    set for another service is never sent to a judge by accident. Must be set when the endpoint is not on this
    machine; `null` sends no key."""
    max_concurrency: int = Field(4, gt=0)
    """Requests in flight at once; the completions of a batch are judged in parallel up to this limit."""
    max_retries: int = Field(3, ge=0)
    """Retries of one request after a 429, a 5xx, a timeout or a connection error (other 4xx are not retried)."""
    timeout_s: float = Field(60.0, gt=0)
    """Seconds to wait for the endpoint (connecting, and between bytes of the reply) before the attempt fails."""
    backoff_s: float = Field(1.0, ge=0)
    """Delay before the first retry; it doubles at each retry, with random jitter (x0.5-1), up to
    `max_backoff_s`. A `Retry-After` header from the server is honoured, up to `max_backoff_s`."""
    max_backoff_s: float = Field(30.0, ge=0)
    """Longest wait between two attempts, whatever the backoff or the server's `Retry-After` says."""
    budget: int | None = Field(None, gt=0)
    """Most HTTP requests this run may send to the judge (retries included); once spent, the remaining
    judgements get `fallback_score`. Unset: no limit."""
    cache: bool | str = True
    """On-disk cache of judgements, keyed by endpoint, model, prompt, answer and reference: `true` keeps it under
    the toolkit's cache directory (`LLMFT_CACHE_DIR`, default `~/.cache/llm_finetuning/judge`), a string is
    a directory of your choice, `false` disables it. Only replies that parsed are cached."""
    fallback_score: float = Field(0.0, ge=0, le=1)
    """Reward given to a completion whose judgement failed (endpoint down, unparseable reply, budget spent).
    Failures are counted and reported, never raised."""
    temperature: float = Field(0.0, ge=0, le=2)
    """Sampling temperature of the judge; 0 makes its scores repeatable (and the cache meaningful)."""
    max_tokens: int = Field(256, gt=0)
    """Longest judge reply, in tokens."""
    warn_every: int = Field(20, gt=0)
    """Judge failures are logged as a warning at the first one and then once every this many, with counts."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"`{value}` is not an http(s) URL; write e.g. `http://127.0.0.1:8000/v1`")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            # Never echo the value: it may be the key itself.
            raise ValueError(
                "must be the NAME of an environment variable (e.g. `OPENAI_API_KEY`), not the key itself; "
                "export the key in that variable"
            )
        return value

    @model_validator(mode="after")
    def _backoff_bounds(self) -> JudgeConfig:
        if self.backoff_s > self.max_backoff_s:
            raise ValueError(f"`backoff_s` ({self.backoff_s}) is above `max_backoff_s` ({self.max_backoff_s})")
        return self


def load_judge_config(path: str, flag: str = "--judge-config") -> JudgeConfig:
    """A judge section from its own YAML file (the CLI's `--judge-config`); a clear error naming the flag."""
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from llm_finetuning.errors import ConfigError

    try:
        return JudgeConfig.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{flag} {path}: {exc}") from None
