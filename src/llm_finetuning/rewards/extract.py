"""Answer extraction and normalisation, shared by the rewards and by evaluation.

Everything here is a pure function of text: find the final answer of a completion (`<answer>` tags, `#### N`,
`\\boxed{...}`, a choice letter, yes/no/maybe), read a number from it, normalise strings for comparison
(SQuAD-style for short answers, LaTeX-aware for math) and score short answers (exact match, token F1).
It also parses the `<reasoning>...</reasoning><answer>...</answer>` layout the format rewards check.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

# ----------------------------------------------------------------------------------------------- tags
REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
FORMAT_TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
"""The four tags of the reasoning/answer layout, in the order a well-formed response has them."""


def extract_tagged(text: str, tag: str) -> str | None:
    """The content of the last `<tag>...</tag>` pair (tag names match case-insensitively), stripped.

    "Last" means the last closing tag and the nearest opening tag before it, so `<a><a>1</a>` gives `1`.
    Returns `""` for an empty pair and None when there is no closed pair (e.g. a generation cut off
    inside the block).
    """
    name = re.escape(tag.strip("<>/ "))
    closes = list(re.finditer(rf"</{name}\s*>", text, re.IGNORECASE))
    if not closes:
        return None
    end = closes[-1].start()
    opens = list(re.finditer(rf"<{name}\s*>", text[:end], re.IGNORECASE))
    if not opens:
        return None
    return text[opens[-1].end() : end].strip()


FINAL_MARK = re.compile(r"####[ \t]*([^\n]*)")


def extract_final_answer(text: str) -> str | None:
    """The final answer of a math completion: the content of the last `<answer>` block when it is non-empty,
    else the rest of the line after the last `####` (GSM8K style), else None."""
    tagged = extract_tagged(text, "answer")
    if tagged:
        return tagged
    marks = FINAL_MARK.findall(text)
    if marks and marks[-1].strip():
        return marks[-1].strip()
    return None


def answer_or_text(text: str) -> str:
    """What a QA reward compares with the reference: the last `<answer>` block's content when the completion
    has one (even empty), else the whole completion, stripped."""
    tagged = extract_tagged(text, "answer")
    return text.strip() if tagged is None else tagged


BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces included, stripped.

    `\\boxed 5` (no braces) gives the token after the space. None when there is no box, when the last one is
    empty, or when its braces never close (a cut-off generation: an earlier box is not taken instead).
    """
    matches = list(BOX_COMMAND.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    if start >= len(text):
        return None
    if text[start] != "{":
        token = re.match(r"[^\s$]+", text[start:])
        return token.group(0) if token else None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index].strip() or None
    return None


# ----------------------------------------------------------------------------------------------- numbers
UNICODE_FRACTIONS = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅛": "1/8"}
LATEX_FRACTION = re.compile(r"\\frac\s*\{\s*([-+]?\s*[\d.,]+)\s*\}\s*\{\s*([-+]?\s*[\d.,]+)\s*\}")
LATEX_SHORT_FRACTION = re.compile(r"\\frac\s*(\d)\s*(\d)")
LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
NUMBER = re.compile(
    r"""
    (?:(?<![\w)\]}])(?P<sign>[-+]))?                  # a sign, unless it joins two terms (3-4)
    (?:[$€£¥]\s?(?P<after_currency>-)?)?              # currency, and a sign after it ($-5)
    (?<![\d.])                                        # the start of a digit run, never its middle
    (?:
        (?P<whole>\d+)[ \t]+(?P<num>\d+)/(?P<den>\d+)(?![\d/])     # mixed number: 1 1/2
      | (?P<fnum>\d+(?:\.\d+)?)/(?P<fden>\d+(?:\.\d+)?)(?![\d/])   # fraction: 3/4
      | (?P<grouped>\d{1,3}(?:,\d{3})+(?:\.\d+)?)(?![\d])          # thousands separators: 1,080.50
      | (?P<plain>(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)        # 72, 3.50, .5, 1e-3
    )
    (?P<percent>[ \t]?%)?
    """,
    re.VERBOSE,
)
VARIABLE_PREFIX = re.compile(r"^[A-Za-z]\s*=\s*")


def _clean_number_text(text: str, strict: bool) -> str:
    """Rewrite the LaTeX and Unicode spellings of numbers into the plain ones NUMBER reads."""
    boxed = extract_boxed(text) if "\\boxed" in text or "\\fbox" in text else None
    if boxed is not None:
        text = boxed
    text = text.replace("−", "-")
    for glyph, plain in UNICODE_FRACTIONS.items():
        text = re.sub(rf"(?<=\d){glyph}", f" {plain}", text).replace(glyph, plain)  # 1½ = 1 1/2
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])|\\!", "", text)
    text = text.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    text = re.sub(r"(?<=\d)\\,(?=\d{3}(?!\d))", ",", text)  # 1\,080: a LaTeX thin space groups thousands
    text = re.sub(r"\\[,;: ]", " ", text)
    text = re.sub(r"\^\s*\{?\\circ\}?|°", "", text)
    text = LATEX_FRACTION.sub(lambda m: f"{m.group(1).replace(' ', '')}/{m.group(2).replace(' ', '')}", text)
    text = LATEX_SHORT_FRACTION.sub(r"\1/\2", text)
    if strict:
        # A unit in \text{...} is not part of the value; other text is.
        text = LATEX_TEXT.sub(lambda m: "" if re.fullmatch(r"[A-Za-z\s.]*", m.group(1)) else m.group(1), text)
        text = VARIABLE_PREFIX.sub("", text.strip()).rstrip(". ")
        text = re.sub(r"^\$+|\$+$", "", text).strip() if text.count("$") % 2 == 0 else text
    else:
        text = LATEX_TEXT.sub(lambda m: f" {m.group(1)} ", text)
    return text


def _value(match: re.Match[str], strict: bool) -> float | None:
    sign = -1.0 if "-" in (match.group("sign"), match.group("after_currency")) else 1.0
    if match.group("whole") is not None:
        whole, num, den = float(match.group("whole")), float(match.group("num")), float(match.group("den"))
        if den == 0:
            return None
        if num >= den:
            # `2 10/5` is not a mixed number: in text the fraction alone is the last number.
            return None if strict else sign * num / den
        value = whole + num / den
    elif match.group("fnum") is not None:
        num, den = float(match.group("fnum")), float(match.group("fden"))
        if den == 0:
            return None
        value = num / den
    elif match.group("grouped") is not None:
        value = float(match.group("grouped").replace(",", ""))
    else:
        value = float(match.group("plain"))
    value *= sign
    return value if math.isfinite(value) else None


def parse_number(text: str | None, strict: bool = False) -> float | None:
    """The number a short answer states, or None.

    Reads `72`, `-3`, `3.50` (= 3.5), `.5`, `1,080` and `1,080.50` (thousands separators), `$5`, `€5`, `£5`,
    `-$5`, `25%` (= 25, the percent sign is dropped, not divided), `3/4`, `1 1/2` (mixed), `½`, LaTeX
    `\\frac{3}{4}`/`\\dfrac34`, `1{,}080`, `\\$5`, `90^\\circ`, and the content of a `\\boxed{}` when present.
    When several numbers appear (`72 apples`, `5 + 3 = 8`) the last one is the answer; words around them are
    ignored. Not read: number words (`seventy`), multipliers (`1.5 million` = 1.5), European decimal commas.

    With `strict=True` the whole text must be one number (besides currency, percent, degrees, a `x =` prefix,
    a trailing `.` and unit-only `\\text{...}`), so `\\frac{\\sqrt{3}}{2}` or `2x + 1` give None instead of
    their last number: used where non-numeric answers must be compared as strings.
    """
    if not text:
        return None
    cleaned = _clean_number_text(text, strict)
    if strict:
        match = NUMBER.fullmatch(cleaned.strip())
        return _value(match, strict) if match else None
    values = [value for match in NUMBER.finditer(cleaned) if (value := _value(match, strict)) is not None]
    return values[-1] if values else None


def numbers_equal(prediction: float, reference: float, rel_tol: float = 1e-9) -> bool:
    """Equal up to floating-point noise: relative tolerance `rel_tol`, absolute 1e-12 (for a reference of 0)."""
    return math.isclose(prediction, reference, rel_tol=rel_tol, abs_tol=1e-12)


def normalize_math(text: str) -> str:
    """A LaTeX answer reduced for string comparison: `$` delimiters, spaces, `\\left`/`\\right`, `\\!` and
    spacing commands removed, `\\dfrac`/`\\tfrac` -> `\\frac`, a trailing `.` dropped."""
    text = text.strip().strip("$")
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])|\\[!,;: ]", "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    return re.sub(r"\s+", "", text).rstrip(".")


# ----------------------------------------------------------------------------------------------- choices
ENGLISH_LETTER_WORDS = frozenset("AI")
"""Letters that are also English words: as a bare token they only count when no word follows them."""


def extract_choice_letter(text: str, letters: str = "ABCDE") -> str | None:
    """The option letter a multiple-choice answer picks, upper-case, or None.

    Tried in order, the first that decides wins:
    1. the whole text is one letter, decorated or not: `C`, `c`, `(C)`, `C.`, `**C**`;
    2. the last "answer" statement: `The answer is C`, `Answer: (C)`, `correct answer is option C`;
    3. `option C` / `choice C` mentions, when they name a single letter;
    4. lines starting with a letter (`C. Pneumonia`, `C) ...`), when they name a single letter;
    5. parenthesised letters `(C)`, when they name a single letter;
    6. bare upper-case letters standing alone, when they name a single letter; `A` and `I` followed by a word
       are read as the article and the pronoun (`A patient presents...`), not as choices.
    Steps 2-6 only read upper-case letters (`the answer is a virus` names no letter). Several different
    letters in one of steps 3-6 are ambiguous: the next step is tried, and None when none decides.
    A letter followed by a word still counts in step 2 (`The answer is B because...`).
    """
    valid = "".join(dict.fromkeys(letters.upper()))
    if not valid:
        return None
    cls = f"[{re.escape(valid)}]"
    after = r"(?![\w'])"
    whole = re.fullmatch(rf"[\s*_`'\"(\[]*({cls})[\s*_`'\")\].:]*", text.strip(), re.IGNORECASE)
    if whole:
        return whole.group(1).upper()
    statement = re.compile(
        r"(?i:\banswer)(?i:\s+(?:is|would\s+be|will\s+be|should\s+be|must\s+be))?\s*[:=\-]?\s*"
        rf"(?i:(?:option|choice|letter)\s*)?[*_`'\"(\[]*({cls}){after}"
    )
    found = statement.findall(text)
    if found:
        return found[-1]
    tiers = (
        rf"(?i:\b(?:option|choice))\s*[(\[]?({cls}){after}",
        rf"(?m)^[ \t]*[*_(\[]*({cls})[).:\]]",
        rf"\(({cls})\)",
    )
    for pattern in tiers:
        named = set(re.findall(pattern, text))
        if len(named) == 1:
            return named.pop()
    bare = {
        m.group(1)
        for m in re.finditer(rf"(?<![\w'])({cls}){after}", text)
        if not (m.group(1) in ENGLISH_LETTER_WORDS and re.match(r"\s+[A-Za-z]", text[m.end() :]))
    }
    return bare.pop() if len(bare) == 1 else None


DECISION_STATEMENT = re.compile(
    r"\b(?:answer|decision|conclusion)\b(?:\s+(?:is|would\s+be|will\s+be))?\s*[:=\-]?\s*[*_`'\"(\[]*"
    r"\b(yes|no|maybe)\b",
    re.IGNORECASE,
)
LEADING_DECISION = re.compile(r"^[\W_]*(yes|no|maybe)\s*(?=[,.;:!?)*\-]|\n|$)", re.IGNORECASE)
TRAILING_DECISION = re.compile(r"\b(yes|no|maybe)[\W_]*$", re.IGNORECASE)


def extract_yes_no_maybe(text: str) -> str | None:
    """`yes`, `no` or `maybe` (lower-case) from a PubMedQA-style answer, or None.

    Tried in order: the last statement `answer/decision/conclusion is (yes|no|maybe)` (`The answer is yes.`,
    `Final answer: Maybe`); a first word followed by punctuation or nothing (`No.`, `Yes, because...`,
    `**maybe**`); the text's last word (`..., so yes.`). A `no` elsewhere (`No significant difference...`,
    `there is no evidence`) is not read as the decision.
    """
    found = DECISION_STATEMENT.findall(text)
    if found:
        return found[-1].lower()
    text = text.strip()
    for pattern in (LEADING_DECISION, TRAILING_DECISION):
        match = pattern.search(text)
        if match:
            return match.group(1).lower()
    return None


# ----------------------------------------------------------------------------------------------- short answers
ARTICLES = re.compile(r"\b(?:a|an|the)\b")
ASCII_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normal form: lower-case, punctuation removed (ASCII and Unicode), the articles a/an/the
    removed, whitespace collapsed to single spaces."""
    text = "".join(
        ch for ch in text.lower() if ch not in ASCII_PUNCTUATION and not unicodedata.category(ch).startswith("P")
    )
    return " ".join(ARTICLES.sub(" ", text).split())


def _references(reference: str | Iterable[str]) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


def exact_match(prediction: str, reference: str | Iterable[str]) -> float:
    """1.0 when `prediction` equals a reference (any of a list) after `normalize_answer`, else 0.0
    (also for an empty list of references)."""
    target = normalize_answer(prediction)
    return 1.0 if any(normalize_answer(ref) == target for ref in _references(reference)) else 0.0


def _f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    if not prediction_tokens or not reference_tokens:
        # Nothing to overlap: right only when both are empty (e.g. an answer of just "the").
        return float(prediction_tokens == reference_tokens)
    common = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str | Iterable[str]) -> float:
    """Token-level F1 between the normalised prediction and reference (the best over a list of references):
    2PR/(P+R) with P = shared tokens / prediction tokens and R = shared tokens / reference tokens (tokens
    counted with multiplicity). 0.0 for no shared token or an empty list; 1.0 when both normalise to empty."""
    tokens = normalize_answer(prediction).split()
    return max((_f1(tokens, normalize_answer(ref).split()) for ref in _references(reference)), default=0.0)


# ----------------------------------------------------------------------------------------------- layout
def tag_counts(text: str) -> dict[str, int]:
    """How often each of the four layout tags occurs (exact, case-sensitive spelling)."""
    return {tag: text.count(tag) for tag in FORMAT_TAGS}


def well_formed_blocks(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) when each of `<reasoning>`, `</reasoning>`, `<answer>`, `</answer>` occurs exactly
    once, in that order, and both blocks have non-blank content; else None. Text outside may exist."""
    if any(count != 1 for count in tag_counts(text).values()):
        return None
    positions = [text.index(tag) for tag in FORMAT_TAGS]
    if positions != sorted(positions):
        return None
    reasoning = text[positions[0] + len(REASONING_OPEN) : positions[1]].strip()
    answer = text[positions[2] + len(ANSWER_OPEN) : positions[3]].strip()
    return (reasoning, answer) if reasoning and answer else None


def only_blocks(text: str) -> bool:
    """True when the response is well-formed (see `well_formed_blocks`) and nothing but whitespace stands
    before `<reasoning>`, between `</reasoning>` and `<answer>`, and after `</answer>`."""
    if well_formed_blocks(text) is None:
        return False
    stripped = text.strip()
    between = stripped[stripped.index(REASONING_CLOSE) + len(REASONING_CLOSE) : stripped.index(ANSWER_OPEN)]
    return stripped.startswith(REASONING_OPEN) and stripped.endswith(ANSWER_CLOSE) and not between.strip()


def non_empty_lines(text: str) -> int:
    """The number of lines with something other than whitespace."""
    return sum(1 for line in text.splitlines() if line.strip())
