"""Math answers compared as mathematics, with math-verify (Hugging Face's verifier, on latex2sympy2): `2\\sqrt3`
equals `2\\sqrt{3}`, `\\{1,2\\}` equals `\\{2,1\\}`, `\\frac{\\sqrt3}{3}` equals `\\frac{1}{\\sqrt3}`.

Each comparison has a time limit: sympy can take minutes on a pathological expression, and a reward must not stall
training. math-verify enforces it with SIGALRM, which only the main thread may use; elsewhere (a reward called from
a worker thread) the limit is kept by refusing answers longer than `MAX_CHARS` instead. When the verifier is not
installed, cannot parse an answer or runs out of time, the answer is `None` (unknown) and the callers fall back to
their string rules.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

TIMEOUT_S = 2
"""Seconds allowed to parse each side and to compare them (math-verify takes whole seconds)."""
MAX_CHARS = 300
"""Longest answer compared outside the main thread, where no alarm can stop a runaway comparison."""


@lru_cache(maxsize=1)
def _verifier() -> Any:
    try:
        import math_verify
    except ImportError:
        logger.warning("math-verify is not installed: math answers are compared by string rules only")
        return None
    return math_verify


def _wrapped(text: str) -> str:
    text = text.strip()
    if "\\boxed" in text or text.startswith("$"):
        return text
    return f"${text}$"  # a bare answer (a boxed answer's content): math-verify extracts LaTeX between dollars


_PROSE = re.compile(r"^[^\d\\^_{}=+*/]*$")


def _prose(text: str) -> bool:
    """Several words and nothing mathematical: `the same as before` (sympy would read it as a product of symbols,
    slowly, and never equal to a number)."""
    return len(text.split()) >= 3 and bool(_PROSE.match(text))


@lru_cache(maxsize=65536)
def math_equivalent(prediction: str, reference: str) -> bool | None:
    """Whether two final answers are the same mathematical object (True/False), or None when the verifier cannot
    tell (not installed, unparseable, prose, out of time, or too long to compare safely off the main thread).
    Results are cached: a GRPO batch repeats its references, and often its answers."""
    verifier = _verifier()
    if verifier is None or not prediction.strip() or not reference.strip() or _prose(prediction):
        return None
    main = threading.current_thread() is threading.main_thread()
    if not main and max(len(prediction), len(reference)) > MAX_CHARS:
        return None
    timeout = TIMEOUT_S if main else None
    config = [verifier.LatexExtractionConfig(), verifier.ExprExtractionConfig()]
    try:
        gold = verifier.parse(_wrapped(reference), extraction_config=config, parsing_timeout=timeout)
        answer = verifier.parse(_wrapped(prediction), extraction_config=config, parsing_timeout=timeout)
        if not gold or not answer:
            return None
        return bool(verifier.verify(gold, answer, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a verifier failure on one answer falls back to the string rules
        logger.debug("math-verify failed on %.80r vs %.80r", prediction, reference, exc_info=True)
        return None
