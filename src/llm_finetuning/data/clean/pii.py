"""PII redaction with typed placeholders. Candidates found by pattern are checked before they are replaced
(Luhn for cards, mod-97 for IBANs, octet ranges and `ipaddress` for IPs, reserved ranges for SSNs), so that
dates, years and plain numbers stay as they are."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "credit_card": "<CREDIT_CARD>",
    "ip_address": "<IP_ADDRESS>",
    "iban": "<IBAN>",
    "ssn": "<SSN>",
}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,}\b"
)
# Not part of a longer number, a decimal fraction or a hyphenated code.
_CARD = re.compile(r"(?<![\w-])(?<!\d[.,])(?:\d{13,19}|\d{4}(?:[ -]\d{2,6}){2,4})(?![\w]|[-.,]\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w]|-\d)")
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]+(?:\d{1,3}(?:\.\d{1,3}){3})?(?:%\w+)?"
    r"(?![\w:]|\.\d)"
)
# North American numbers need separators and valid area/exchange codes; others need a leading +country code.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+?1[ .-]?)?\([2-9]\d{2}\) ?[2-9]\d{2}[ .-]\d{4}"
    r"|(?:\+?1[ .-])?[2-9]\d{2}([.-])[2-9]\d{2}\1\d{4}"
    r"|\+[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}"
    r")(?![\w]|[-.]\d)"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number: doubling every second digit from the right, the sum ends in 0."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _card_valid(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def iban_valid(text: str) -> bool:
    """ISO 13616: 15-34 characters; moving the first four to the end and reading letters as 10..35 gives a
    number that is 1 modulo 97."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    return int("".join(str(int(char, 36)) for char in compact[4:] + compact[:4])) % 97 == 1


def _ipv6_valid(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    groups = [group for group in re.split(r"[:.]", text) if group]
    return len(groups) >= 3 or (len(groups) == 2 and any(char.isdigit() for char in text))


def _phone_valid(text: str) -> bool:
    return 10 <= sum(char.isdigit() for char in text) <= 15


# (type, pattern, check of a candidate or None, whether a shorter candidate ending at a separator may be tried,
# and a cheap pattern that every match contains: the full pattern runs only where it is found).
_Check = Callable[[str], bool]
_RULES: list[tuple[str, re.Pattern[str], _Check | None, bool, re.Pattern[str]]] = [
    ("credit_card", _CARD, _card_valid, True, re.compile(r"\d{4}[ -]?\d\d")),
    ("iban", _IBAN, iban_valid, True, re.compile(r"[A-Z]{2}\d\d")),
    ("ssn", _SSN, None, False, re.compile(r"\d-\d\d-\d")),
    ("email", _EMAIL, None, False, re.compile("@")),
    ("ip_address", _IPV6, _ipv6_valid, False, re.compile(r":[0-9A-Fa-f]{0,4}:")),
    ("ip_address", _IPV4, None, False, re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")),
    ("phone", _PHONE, _phone_valid, True, re.compile(r"\+\d|\d{3}[ .)-]{1,2}\d{3}")),
]


def redact(text: str, types: Iterable[str] = PLACEHOLDERS) -> tuple[str, Counter[str]]:
    """`text` with each PII span of the given types replaced by its placeholder, and the counts by type."""
    wanted = set(types)
    counts: Counter[str] = Counter()
    for kind, pattern, check, shrink, needs in _RULES:
        if kind in wanted and needs.search(text):
            text = pattern.sub(_replacer(kind, check, shrink, counts), text)
    return text, counts


def _replacer(kind: str, check: _Check | None, shrink: bool, counts: Counter[str]) -> Callable[[re.Match], str]:
    placeholder = PLACEHOLDERS[kind]

    def replace(match: re.Match) -> str:
        found = match.group(0)
        ends = [len(found)]
        if shrink:  # a greedy match may have taken a following word or number: try ending at each separator
            ends += [i for i in range(len(found) - 1, 0, -1) if found[i] in " -."]
        for end in ends:
            if check is None or check(found[:end]):
                counts[kind] += 1
                return placeholder + found[end:]
        return found

    return replace


def redact_value(value: Any, types: Iterable[str], skip_keys: frozenset[str] = frozenset()) -> tuple[Any, Counter]:
    """Redact every string inside `value` (dicts, lists, message contents); keys in `skip_keys` are left as
    they are. Unchanged parts are returned as the same objects; changed containers are new copies."""
    if isinstance(value, str):
        return redact(value, types)
    counts: Counter[str] = Counter()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            new, found = (item, None) if key in skip_keys else redact_value(item, types, skip_keys)
            out[key] = new
            counts.update(found or {})
        return (out if counts else value), counts
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            new, found = redact_value(item, types, skip_keys)
            items.append(new)
            counts.update(found)
        return (type(value)(items) if counts else value), counts
    return value, counts
