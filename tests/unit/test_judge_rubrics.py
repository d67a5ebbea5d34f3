"""Rubric prompts and the parsing of judge replies, on hand-written replies with hand-computed scores."""

from __future__ import annotations

import pytest

from llm_finetuning.judge.rubrics import (
    MAX_QUESTION_CHARS,
    RUBRICS,
    JudgeItem,
    parse_binary,
    parse_criteria,
    parse_score,
)

pytestmark = pytest.mark.unit

QA = RUBRICS["multihop_qa"].criteria


def test_rubrics_and_their_criteria():
    assert set(RUBRICS) == {"multihop_qa", "medical_qa", "summarization", "answer_relevancy", "correctness", "refusal"}
    assert QA == ("factual_accuracy", "supporting_evidence", "completeness")
    assert RUBRICS["medical_qa"].criteria == QA
    assert RUBRICS["summarization"].criteria == ("consistency", "relevance", "coherence")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # (5-1 + 3-1 + 4-1) / 4 / 3 = 9/12
        ('{"factual_accuracy": 5, "supporting_evidence": 3, "completeness": 4}', 0.75),
        # every criterion at the bottom and at the top
        ('{"factual_accuracy": 1, "supporting_evidence": 1, "completeness": 1}', 0.0),
        ('{"factual_accuracy": 5, "supporting_evidence": 5, "completeness": 5}', 1.0),
        # prose and a code fence around the object; keys spelled with spaces and capitals; "4/5" strings
        (
            'The answer matches.\n```json\n{"Factual accuracy": "4/5", "supporting-evidence": 2, '
            '"COMPLETENESS": 3}\n```',
            (3 + 1 + 2) / 12,
        ),
        # `Name: N` lines, markdown bold: (2-1 + 1-1 + 3-1) / 12
        ("**Factual accuracy**: 2\n- Supporting evidence: 1\nCompleteness = 3", 0.25),
        # fractional scores are kept: (4.5-1 + 4-1 + 4-1) / 12
        ('{"factual_accuracy": 4.5, "supporting_evidence": 4, "completeness": 4}', 9.5 / 12),
        # only an overall score: (4-1)/4
        ("Score: 4", 0.75),
        ('{"score": 2}', 0.25),
        # the last complete object wins (a judge drafting, then concluding)
        (
            'Draft {"factual_accuracy": 1, "supporting_evidence": 1, "completeness": 1} then final '
            '{"factual_accuracy": 5, "supporting_evidence": 5, "completeness": 3}',
            10 / 12,
        ),
        # failures: out of range, a criterion missing with no overall score, prose, empty, booleans
        ('{"factual_accuracy": 6, "supporting_evidence": 3, "completeness": 4}', None),
        ('{"factual_accuracy": 0, "supporting_evidence": 3, "completeness": 4}', None),
        ('{"factual_accuracy": 5, "completeness": 4}', None),
        ("The answer is good and complete.", None),
        ("", None),
        ('{"factual_accuracy": true, "supporting_evidence": 3, "completeness": 4}', None),
    ],
)
def test_criteria_parse(reply, expected):
    value = parse_criteria(reply, QA)
    assert value == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"score": 5}', 1.0),
        ('{"score": 3}', 0.5),
        ("Score: 1", 0.0),
        ("After review.\nFinal score: 4/5", 0.75),
        ("**Score:** 2", 0.25),
        ("score = 3.5", 0.625),
        ("Score: 1\n...on reflection\nScore: 5", 1.0),  # the last one
        ("Score: 10", None),  # not a 1-5 score
        ("Score: 4.5.5", None),
        ('{"rating": 4}', None),
        ("Four out of five.", None),
    ],
)
def test_score_parse(reply, expected):
    assert parse_score(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Yes", 1.0),
        ("no.", 0.0),
        ("**YES** - it names the same city", 1.0),
        ('{"correct": "no"}', 0.0),
        ('{"correct": true}', 1.0),
        ('{"verdict": "incorrect"}', 0.0),
        ('{"score": 1}', 1.0),
        ("The candidate names the same city.\nVerdict: yes", 1.0),
        ("maybe", None),
        ('{"correct": "perhaps"}', None),
        ('{"score": 4}', None),
        ("The answer is Paris.", None),
        ("", None),
    ],
)
def test_binary_parse(reply, expected):
    assert parse_binary(reply) == expected


def test_rubric_dispatches_on_its_kind():
    reply = '{"factual_accuracy": 3, "supporting_evidence": 3, "completeness": 3}'
    assert RUBRICS["multihop_qa"].parse(reply) == 0.5
    assert RUBRICS["correctness"].parse("yes") == 1.0
    assert RUBRICS["answer_relevancy"].parse("Score: 3") == 0.5
    assert RUBRICS["summarization"].parse('{"consistency": 5, "relevance": 1, "coherence": 3}') == 0.5


def test_messages_hold_question_reference_and_answer():
    item = JudgeItem(answer="Paris", references=("Paris", "City of Paris"), question="Capital of France?")
    system, user = RUBRICS["correctness"].messages(item)
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    assert "Capital of France?" in text and "Candidate answer:\nParis" in text
    assert "(any of these is correct)\n- Paris\n- City of Paris" in text
    assert text.index("Question") < text.index("Reference answer") < text.index("Candidate answer")
    no_reference = RUBRICS["correctness"].messages(JudgeItem(answer="x"))[1]["content"]
    assert "Reference answer:\n(none given)" in no_reference
    # relevancy needs no reference and shows none
    assert "Reference" not in RUBRICS["answer_relevancy"].messages(JudgeItem(answer="x", question="q"))[1]["content"]


def test_long_questions_keep_their_end():
    question = "passage " * 2000 + "QUESTION: who?"
    text = RUBRICS["multihop_qa"].messages(JudgeItem(answer="a", references=("b",), question=question))[1]["content"]
    assert "QUESTION: who?" in text and "[...] " in text
    assert len(text) < MAX_QUESTION_CHARS + 3000
