"""Data cleaning: exact and near dedup, MinHash accuracy, quality filters, PII, decontamination, the report."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from pydantic import ValidationError

from llm_finetuning.data.clean import CleanConfig, clean_records, default_text_of, redact
from llm_finetuning.data.clean.config import NearDedupConfig, QualityConfig
from llm_finetuning.data.clean.hashing import word_bytes, word_hashes
from llm_finetuning.data.clean.minhash import MinHasher, batches, lsh_params
from llm_finetuning.data.clean.pii import iban_valid, luhn_valid
from llm_finetuning.data.clean.quality import quality_problem
from llm_finetuning.data.clean.text import normalize, words
from llm_finetuning.errors import ConfigError, DataError
from tests.conftest import shared

pytestmark = pytest.mark.unit

ONLY_EXACT = {"near_dedup": {"enabled": False}, "pii": {"enabled": False}}


def config(**sections) -> CleanConfig:
    return CleanConfig.model_validate(sections)


def essay(seed: int, length: int = 120) -> str:
    """A text of `length` distinct-looking words, different for each seed."""
    rng = random.Random(seed)
    return " ".join(
        f"{rng.choice('bcdfghklmnprstvz')}{rng.choice('aeiou')}{rng.randrange(10**6)}" for _ in range(length)
    )


def accounted(result, count: int) -> None:
    """Every input record is either kept or named by exactly one removal."""
    removed = [event.index for event in result.report.removed]
    assert len(removed) == len(set(removed))
    assert sorted(removed + result.indices) == list(range(count))
    assert result.report.output_count == len(result.records) == count - len(removed)
    data = json.loads(result.report.to_json())
    assert data["input"] == count and data["output"] + data["removed"] == count


# --- text of a record -------------------------------------------------------------------------------------------


def test_default_text_of_reads_every_format_and_skips_labels_and_metadata():
    assert default_text_of({"instruction": "A", "input": "", "output": "B", "_where": "f:1"}) == "A\n\nB"
    messages = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert default_text_of(messages) == "hi\nyo"
    assert default_text_of({"conversations": [{"from": "human", "value": "q"}], "id": 3}) == "q"


def test_normalize_folds_case_width_space_and_edge_punctuation():
    assert normalize("  Hello,\n\tWORLD!!! ") == "hello, world"
    assert normalize("\uff28\uff45\uff4c\uff4c\uff4f world") == "hello world"  # fullwidth letters (NFKC)
    assert normalize("...Hi...") == "hi"
    assert words("Don't stop-me NOW") == ["don", "t", "stop", "me", "now"]


# --- exact dedup ---------------------------------------------------------------------------------------------------


def test_exact_dedup_keeps_first_and_names_it():
    records = [
        {"text": "The cat sat."},
        {"text": "Something else"},
        {"text": "  the CAT   sat!", "_where": "data.jsonl:3"},
        {"text": "The cat sat on the mat."},
        {"text": "something else"},
    ]
    result = clean_records(records, config(**ONLY_EXACT))
    assert result.indices == [0, 1, 3]
    assert [r["text"] for r in result.records] == ["The cat sat.", "Something else", "The cat sat on the mat."]
    events = {e.index: e.to_dict() for e in result.report.removed}
    assert events[2] == {
        "index": 2,
        "where": "data.jsonl:3",
        "step": "exact_dedup",
        "action": "removed",
        "reason": "exact duplicate of #0",
        "duplicate_of": 0,
    }
    assert events[4]["duplicate_of"] == 1
    accounted(result, 5)


def test_exact_dedup_can_be_disabled():
    result = clean_records([{"t": "a"}, {"t": "a"}], config(dedup={"exact": False}, **ONLY_EXACT))
    assert result.indices == [0, 1]
    assert result.report.steps[1].note == "disabled"


# --- near dedup ----------------------------------------------------------------------------------------------------


def test_near_dedup_catches_light_edit_and_keeps_unrelated():
    base = essay(1)
    edited = base.split()
    edited[60] = "changed"  # one word of 120 replaced: 5-gram Jaccard = 111 / 121 ~ 0.92
    records = [{"text": essay(2)}, {"text": base}, {"text": essay(3)}, {"text": " ".join(edited)}, {"text": essay(4)}]
    result = clean_records(records, config(pii={"enabled": False}))
    assert result.indices == [0, 1, 2, 4]
    (event,) = result.report.removed
    assert event.step == "near_dedup" and event.index == 3 and event.details["duplicate_of"] == 1
    assert abs(event.details["similarity"] - 111 / 121) < 0.1
    assert event.reason.startswith("near-duplicate of #1 (jaccard~0.")
    accounted(result, 5)


def test_near_dedup_threshold_separates_similar_from_dissimilar():
    base = essay(5).split()
    half = base[:60] + essay(6).split()[:60]  # 5-gram Jaccard 56 / 176 ~ 0.32
    records = [{"text": " ".join(base)}, {"text": " ".join(half)}]
    assert clean_records(records, config(pii={"enabled": False})).indices == [0, 1]
    loose = config(pii={"enabled": False}, near_dedup={"threshold": 0.2})
    assert clean_records(records, loose).indices == [0]


def true_jaccard(a: str, b: str, n: int) -> float:
    def grams(text: str) -> set[tuple[str, ...]]:
        tokens = words(text)
        return {tuple(tokens[i : i + n]) for i in range(max(len(tokens) - n + 1, 1))}

    first, second = grams(a), grams(b)
    return len(first & second) / len(first | second)


BACKENDS = pytest.mark.parametrize("backend", ["rensa", "numpy"])


@BACKENDS
@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (range(0, 100), range(20, 120), 80 / 120),
        (range(0, 100), list(range(0, 50)) + list(range(1000, 1050)), 50 / 150),
        (range(0, 100), range(0, 90), 90 / 100),
        (range(0, 100), range(0, 100), 1.0),
    ],
)
def test_minhash_estimate_is_close_to_true_jaccard_of_word_sets(first, second, expected, backend):
    hasher = MinHasher(NearDedupConfig(ngram=1, num_perm=128, backend=backend))
    a, b = (" ".join(f"w{i}" for i in ids) for ids in (first, second))
    assert true_jaccard(a, b, 1) == pytest.approx(expected)
    signatures, valid = hasher.signatures([a, b])
    assert valid.all()
    assert abs((signatures[0] == signatures[1]).mean() - expected) < 0.1


@BACKENDS
def test_minhash_estimate_of_five_gram_shingles_on_edited_text(backend):
    hasher = MinHasher(NearDedupConfig(backend=backend))
    rng = random.Random(0)
    for seed in range(5):
        tokens = essay(seed, 80).split()
        for _ in range(seed + 1):
            tokens[rng.randrange(80)] = "edit"
        a, b = essay(seed, 80), " ".join(tokens)
        signatures, _ = hasher.signatures([a, b])
        assert abs((signatures[0] == signatures[1]).mean() - true_jaccard(a, b, 5)) < 0.1


@BACKENDS
def test_signature_does_not_depend_on_batch_and_char_shingles_work(backend):
    for shingle in ("word", "char"):
        hasher = MinHasher(NearDedupConfig(shingle=shingle, backend=backend))
        alone, _ = hasher.signatures(["hello there general kenobi"])
        batch, valid = hasher.signatures(["", "x", "hello there general kenobi"])
        assert (batch[2] == alone[0]).all()
        assert valid.tolist() == [False, True, True]


def test_lsh_params_fit_num_perm_and_put_the_s_curve_near_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1
        bands, rows = lsh_params(threshold, 128, exact=True)  # rensa's bands split the whole signature
        assert bands * rows == 128 and abs((1 / bands) ** (1 / rows) - threshold) < 0.15
    assert lsh_params(0.8, 128, exact=True) == (16, 8)


def test_word_hashes_follow_the_words_and_nothing_else():
    texts = ["The cat, the CAT!", "the cat the cat", "Ｔｈｅ café – the cat", "", "...", "naïve_x 42"]
    hashes, offsets = word_hashes(texts)
    per_text = [hashes[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))]
    assert [len(h) for h in per_text] == [len(words(t)) for t in texts] == [4, 4, 4, 0, 0, 2]
    assert per_text[0] == per_text[1]  # case and punctuation are not part of a word
    the, cat = per_text[1][0], per_text[1][1]
    assert per_text[2][0] == the and per_text[2][2:] == [the, cat]  # full-width folds; ASCII or not, same hash
    assert per_text[2][1] not in (the, cat) and the != cat and 0 not in hashes
    alone, _ = word_hashes(["café"])
    assert alone.tolist() == [per_text[2][1]]  # a word's hash does not depend on its neighbours


def test_word_bytes_are_the_words_of_any_text():
    rng = random.Random(7)
    alphabet = "aZ9_ \t\n.,;!?-'\"()[]é߀ßÅİǅ°’–—…·ＡＢ１٣日本語한글\u0301\u200b\u00a0ﬁ½²ⅷ🙂\U0001d400"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        assert word_bytes(text).split() == [word.encode() for word in words(text)], text


def test_word_hashes_count_the_words_of_real_text():
    texts = [default_text_of(record) for record in real_records()[:3000]]
    _, offsets = word_hashes(texts)
    assert np.diff(offsets).tolist() == [len(words(text)) for text in texts]


def test_a_missing_rensa_is_a_config_error_naming_the_fallback(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rensa", None)
    with pytest.raises(ConfigError, match="near_dedup.backend: numpy"):
        clean_records([{"text": essay(1)}, {"text": essay(2)}], config(pii={"enabled": False}))
    kept = clean_records([{"text": essay(1)}], config(pii={"enabled": False}, near_dedup={"backend": "numpy"}))
    assert kept.indices == [0]


# --- quality -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "passes", "fails", "reason"),
    [
        ({"min_chars": 5}, "abcde", "abcd", "chars 4 < min_chars 5"),
        ({"max_chars": 5}, "abcde", "abcdef", "chars 6 > max_chars 5"),
        ({"min_words": 3}, "a b c", "a b", "words 2 < min_words 3"),
        ({"max_words": 3}, "a b c", "a b c d", "words 4 > max_words 3"),
        # "http://ab.cd" is 12 of 20 characters
        ({"max_url_ratio": 0.6}, "http://ab.cd xxxxxxx", "http://ab.cd xxxxxx", "url ratio 0.6316 > 0.6"),
        ({"max_digit_ratio": 0.5}, "ab12", "a123", "digit ratio 0.75 > 0.5"),
        # one of four lines repeats an earlier line
        ({"max_duplicate_line_ratio": 0.25}, "a\nb\n a\nc", "a\nb\na\na", "duplicate line ratio 0.5 > 0.25"),
        # "a b c" occurs twice and covers 6 of 8 words; in the failing text, 6 of 7
        ({"max_top_ngram_ratio": 0.75}, "a b c a b c d e", "a b c a b c d", "top 3-gram ratio 0.8571 > 0.75"),
    ],
)
def test_each_quality_filter_at_its_boundary(setting, passes, fails, reason):
    settings = QualityConfig(**setting)
    assert quality_problem(passes, settings) is None
    assert quality_problem(fails, settings) == reason
    result = clean_records([{"text": passes}, {"text": fails}], config(quality=setting, **ONLY_EXACT))
    assert result.indices == [0]
    assert [(e.index, e.step, e.reason) for e in result.report.removed] == [(1, "quality", reason)]


def test_quality_config_rejects_crossed_bounds_and_unknown_keys():
    with pytest.raises(ValidationError, match="min_chars"):
        QualityConfig(min_chars=10, max_chars=5)
    with pytest.raises(ValidationError, match="max_url"):
        CleanConfig.model_validate({"quality": {"max_url": 0.3}})
    assert not QualityConfig().active and QualityConfig(max_digit_ratio=0.2).active


def test_every_config_field_is_described():
    from llm_finetuning.data.clean import config as module

    for section in (module.CleanConfig, module.ExactDedupConfig, module.NearDedupConfig, module.QualityConfig):
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name}"
    for section in (module.PiiConfig, module.DecontaminateConfig):
        assert all(field.description for field in section.model_fields.values())


# --- PII -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("write to jane.doe+news@mail.example.org.", "write to <EMAIL>.", "email"),
        ("call (415) 555-2671 now", "call <PHONE> now", "phone"),
        ("call 415-555-2671 now", "call <PHONE> now", "phone"),
        ("call 415.555.2671 now", "call <PHONE> now", "phone"),
        ("call +1 415 555 2671 now", "call <PHONE> now", "phone"),
        ("ring +44 20 7946 0958 today", "ring <PHONE> today", "phone"),
        ("ring +49 (0)30 1234567", "ring <PHONE>", "phone"),
        ("visa 4111 1111 1111 1111 ok", "visa <CREDIT_CARD> ok", "credit_card"),
        ("amex 3782-822463-10005", "amex <CREDIT_CARD>", "credit_card"),
        ("card 5500000000000004.", "card <CREDIT_CARD>.", "credit_card"),
        ("host 192.168.0.1, then 10.0.0.255.", "host <IP_ADDRESS>, then <IP_ADDRESS>.", "ip_address"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 and fe80::1", "v6 <IP_ADDRESS> and <IP_ADDRESS>", "ip_address"),
        ("iban DE89 3704 0044 0532 0130 00 thanks", "iban <IBAN> thanks", "iban"),
        ("iban GB82WEST12345698765432", "iban <IBAN>", "iban"),
        ("ssn 123-45-6789.", "ssn <SSN>.", "ssn"),
    ],
)
def test_pii_positive(text, expected, kind):
    redacted, counts = redact(text)
    assert redacted == expected
    assert set(counts) == {kind}


@pytest.mark.parametrize(
    "text",
    [
        "Born on 2024-01-15, paid 12345 dollars in 1999.",  # dates, years, plain numbers are not phones
        "Order 1234567890 shipped; pi is 3.14159265358979; 100-200-3000 is no area code.",
        "Card 4111 1111 1111 1112 fails the Luhn check; so does 4111111111111112.",
        "The ratio was 0.8571428571428571 overall.",  # a Luhn-valid digit run inside a decimal fraction
        "Octet 256 is invalid: 192.168.1.256, and 1.2.3.4.5 is a version.",
        "Time 12:30:45, slice x[::2], name Foo::Bar, mac 00:1a:2b:3c:4d:5e.",
        "IBAN DE88 3704 0044 0532 0130 00 has a bad checksum.",
        "Not SSNs: 000-12-3456 666-12-3456 912-34-5678 123-00-4567 123-45-0000.",
        "user at example dot com, @handle, a@b",
    ],
)
def test_pii_negative(text):
    assert redact(text) == (text, {})


def test_luhn_and_iban_checks():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB83 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82")  # too short


def test_pii_only_selected_types():
    text = "mail a@b.io or call 415-555-2671"
    assert redact(text, ["phone"]) == ("mail a@b.io or call <PHONE>", {"phone": 1})


def test_pii_redacts_every_string_field_and_message_contents_and_reports_counts():
    record = {
        "messages": [
            {"role": "user", "content": "I am bob@example.com, call 415-555-2671 or 415-555-2672"},
            {"role": "assistant", "content": "Noted."},
        ],
        "meta": {"notes": ["server 10.1.2.3"]},
        "_where": "chat.jsonl:7",
        "score": 3,
    }
    original = json.loads(json.dumps(record))
    result = clean_records([record, {"messages": [{"role": "user", "content": "hello"}]}])
    (out, clean) = result.records
    assert out["messages"][0] == {"role": "user", "content": "I am <EMAIL>, call <PHONE> or <PHONE>"}
    assert out["messages"][1] == {"role": "assistant", "content": "Noted."}
    assert out["meta"] == {"notes": ["server <IP_ADDRESS>"]} and out["_where"] == "chat.jsonl:7" and out["score"] == 3
    assert record == original  # the input is not modified
    assert clean == {"messages": [{"role": "user", "content": "hello"}]}
    (event,) = result.report.changed
    assert event.to_dict() == {
        "index": 0,
        "where": "chat.jsonl:7",
        "step": "pii",
        "action": "changed",
        "reason": "redacted 1 email, 1 ip_address, 2 phone",
        "counts": {"email": 1, "phone": 2, "ip_address": 1},
    }
    data = result.report.to_dict()
    assert data["pii_counts"] == {"email": 1, "ip_address": 1, "phone": 2}
    assert data["changed"] == 1 and data["steps"][-1]["changed"] == 1


# --- decontamination -----------------------------------------------------------------------------------------------

EVAL = " ".join(f"e{i}" for i in range(20))


def test_decontamination_drops_a_13_gram_and_keeps_12_words():
    thirteen = "Intro words. " + " ".join(f"E{i}," for i in range(3, 16)) + " outro"  # case and commas ignored
    twelve = "Intro words " + " ".join(f"e{i}" for i in range(3, 15)) + " outro"
    records = [{"text": thirteen}, {"text": twelve}, {"text": "unrelated"}]
    result = clean_records(records, config(**ONLY_EXACT), eval_texts=["short eval", EVAL])
    assert result.indices == [1, 2]
    (event,) = result.report.removed
    assert event.reason == "shares 1 13-gram(s) with eval item #1"
    assert event.details == {"eval_item": 1, "matches": 1}
    assert result.report.steps[3].note == "1 eval texts shorter than 13 words"
    accounted(result, 3)


def test_decontamination_names_eval_items_and_counts_matches():
    fourteen = " ".join(f"e{i}" for i in range(14))  # two distinct 13-grams
    records = [{"text": fourteen}, {"text": " ".join(f"e{i}" for i in range(13))}]
    settings = config(decontaminate={"min_matches": 2}, **ONLY_EXACT)
    result = clean_records(records, settings, eval_texts={"gsm8k/test.jsonl:5": EVAL})
    assert result.indices == [1]
    assert result.report.removed[0].reason == "shares 2 13-gram(s) with eval item 'gsm8k/test.jsonl:5'"
    assert clean_records(records, config(**ONLY_EXACT)).report.steps[3].note == "no eval texts given"


# --- the report ----------------------------------------------------------------------------------------------------


def test_report_accounts_for_every_record_across_steps(tmp_path):
    base = essay(7)
    records = [
        {"text": base, "_where": "a.jsonl:1"},
        {"text": base.upper()},  # exact duplicate of #0
        {"text": base.replace(base.split()[50], "x")},  # near duplicate of #0
        {"text": "tiny"},  # quality: too short
        {"text": EVAL + " tail"},  # contaminated
        {"text": essay(8) + " mail me: z@q.org"},  # redacted and kept
    ]
    settings = config(quality={"min_words": 3})
    result = clean_records(records, settings, eval_texts=[EVAL], text_of=lambda r: r["text"])
    assert result.indices == [0, 5]
    steps = {e.index: e.step for e in result.report.events}
    assert steps == {1: "exact_dedup", 2: "near_dedup", 3: "quality", 4: "decontaminate", 5: "pii"}
    accounted(result, 6)
    counts = [(s["step"], s["records_in"], s["records_out"]) for s in result.report.to_dict()["steps"]]
    assert counts == [
        ("quality", 6, 5),
        ("exact_dedup", 5, 4),
        ("near_dedup", 4, 3),
        ("decontaminate", 3, 2),
        ("pii", 2, 2),
    ]
    path = result.report.write(tmp_path / "out" / "report.json")
    data = json.loads(path.read_text())
    assert data["removed_by_step"] == {"quality": 1, "exact_dedup": 1, "near_dedup": 1, "decontaminate": 1}
    assert data["events"][0]["index"] == 1 and data["events"][-1]["counts"] == {"email": 1}
    assert data["config"]["quality"]["min_words"] == 3
    assert "quality: 6 -> 5 (1 removed)" in result.report.summary()


def test_text_of_must_return_a_string():
    with pytest.raises(DataError, match=r"record #0 \(f:1\): `text_of` returned int"):
        clean_records([{"a": 1, "_where": "f:1"}], text_of=lambda record: record["a"])


# --- real data -----------------------------------------------------------------------------------------------------


def real_records() -> list[dict]:
    gsm8k = shared("gsm8k/train.jsonl")
    alpaca = shared("alpaca/alpaca_sample2000.alpaca_small.json")
    rows = [json.loads(line) for line in gsm8k.read_text().splitlines()]
    records = [{**row, "_where": f"gsm8k/train.jsonl:{i + 1}"} for i, row in enumerate(rows)]
    return records + json.loads(alpaca.read_text())


@BACKENDS
def test_near_dedup_finds_lightly_edited_copies_in_real_data(backend):
    records = real_records()
    rng = random.Random(0)
    long = [i for i, r in enumerate(records) if len(default_text_of(r).split()) >= 150]
    sources = rng.sample(long, 50)
    copies = []
    for i in sources:
        record = dict(records[i])
        field = max((k for k in record if isinstance(record[k], str) and k != "_where"), key=lambda k: len(record[k]))
        tokens = record[field].split(" ")
        tokens[rng.randrange(len(tokens))] = "EDITED"  # one word replaced
        record[field] = " ".join(tokens)
        record.pop("_where", None)
        copies.append(record)
    result = clean_records(records + copies, config(pii={"enabled": False}, near_dedup={"backend": backend}))
    found = {e.index: e.details["duplicate_of"] for e in result.report.removed if e.step == "near_dedup"}
    assert found == {len(records) + k: i for k, i in enumerate(sources)}
    assert not [e for e in result.report.removed if e.step == "exact_dedup"]
    assert min(e.details["similarity"] for e in result.report.removed) >= 0.8
    accounted(result, len(records) + 50)


def test_pii_on_real_data_redacts_planted_values_and_leaves_numbers_alone():
    records = real_records()[:3000]  # GSM8K: money, dates, times, fractions and long numbers
    result = clean_records(records, config(dedup={"exact": False}, near_dedup={"enabled": False}))
    assert result.report.changed == []
    planted = [dict(r) for r in records[:20]]
    values = ["a.b@example.com", "(415) 555-2671", "4111 1111 1111 1111", "10.0.0.1", "GB82 WEST 1234 5698 7654 32"]
    for i, record in enumerate(planted):
        record["question"] += f" Contact {values[i % len(values)]} for details."
    result = clean_records(planted, config(dedup={"exact": False}, near_dedup={"enabled": False}))
    assert len(result.report.changed) == 20
    assert result.report.pii_counts == {"email": 4, "phone": 4, "credit_card": 4, "ip_address": 4, "iban": 4}
    assert all(" for details." in r["question"] and "Contact <" in r["question"] for r in result.records)


@BACKENDS
def test_signatures_fill_in_batches_like_one_pass(backend, monkeypatch):
    monkeypatch.setattr("llm_finetuning.data.clean.minhash._BATCH_TEXTS", 64)  # shingles of several batches
    monkeypatch.setattr("llm_finetuning.data.clean.minhash._BATCH_CHARS", 50_000)
    assert len(batches([essay(i, 300) for i in range(150)])) > 3
    texts = [essay(i, 300) for i in range(150)]  # 44k shingles: more than one numpy batch
    hasher = MinHasher(NearDedupConfig(backend=backend))
    together, _ = hasher.signatures(texts)
    single = np.stack([hasher.signatures([t])[0][0] for t in texts[:3] + texts[-3:]])
    assert (together[[0, 1, 2, 147, 148, 149]] == single).all()
