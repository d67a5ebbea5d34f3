"""One POST to `/chat/completions` with the standard library, and what its outcome means for a retry.

Nothing here logs the request body, the headers or the key; errors carry the status and a short reason only.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

# Worth another attempt: rate limits, timeouts and server-side errors. Other 4xx mean the request itself is wrong.
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class Outcome:
    """The reply text of an attempt, or why there is none."""

    text: str | None = None
    error: str | None = None
    """Short reason: `HTTP 503`, `timed out`, `connection refused`, `response is not an OpenAI chat completion`."""
    retryable: bool = False
    retry_after: float | None = None
    """Seconds the server asked to wait (`Retry-After`), if it did."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Token counts the server reported (`usage`), 0 when it reported none."""


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (127.0.0.0/8, ::1 or `localhost`)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact(url: str) -> str:
    """`url` without any user:password part, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def opener_for(url: str) -> urllib.request.OpenerDirector:
    """A URL opener; loopback endpoints bypass any proxy configured in the environment."""
    if is_loopback(url):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header: a number of seconds, or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    retry: int, base: float, cap: float, retry_after: float | None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number `retry` (0 for the first): exponential from `base`, jittered x0.5-1 so
    that parallel workers do not retry in lockstep, at least the server's `Retry-After`, never above `cap`."""
    exponential = min(cap, base * 2**retry)
    delay = exponential * (0.5 + 0.5 * (rng or random).random())
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def chat_reply(payload: bytes) -> str | None:
    """The assistant text of an OpenAI chat completion response body, or None when it is not one."""
    return _parse_reply(payload)[0]


def _parse_reply(payload: bytes) -> tuple[str | None, int, int]:
    """The assistant text (None when the body is not a chat completion) and the prompt and completion tokens of
    its `usage` (0 where absent)."""
    try:
        body = json.loads(payload)
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, 0, 0
    if not isinstance(content, str):
        return None, 0, 0
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return content, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def post_chat(
    opener: urllib.request.OpenerDirector, url: str, body: dict[str, Any], headers: dict[str, str], timeout: float
) -> Outcome:
    """POST `body` as JSON to `url` once; never raises for network or server trouble."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json", **headers},
        method="POST",
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        retry_after = parse_retry_after(error.headers.get("Retry-After") if error.headers else None)
        error.close()
        return Outcome(error=f"HTTP {error.code}", retryable=error.code in RETRYABLE_STATUS, retry_after=retry_after)
    except urllib.error.URLError as error:
        reason = error.reason
        timed_out = isinstance(reason, TimeoutError)
        return Outcome(error="timed out" if timed_out else f"connection failed ({reason})", retryable=True)
    except TimeoutError:
        return Outcome(error="timed out", retryable=True)
    except (http.client.HTTPException, ConnectionError, OSError) as error:
        return Outcome(error=f"connection failed ({type(error).__name__})", retryable=True)
    text, prompt_tokens, completion_tokens = _parse_reply(payload)
    if text is None:
        return Outcome(error="response is not an OpenAI chat completion")
    return Outcome(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
