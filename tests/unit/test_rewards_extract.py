"""Answer extraction and normalisation against hand-worked cases: tags, `####`, boxes, numbers in their many
spellings, choice letters (and the article `A`), yes/no/maybe, SQuAD normalisation, exact match, token F1 and
the reasoning/answer layout."""

from __future__ import annotations

import pytest

from llm_finetuning.rewards.extract import (
    answer_or_text,
    exact_match,
    extract_boxed,
    extract_choice_letter,
    extract_final_answer,
    extract_tagged,
    extract_yes_no_maybe,
    non_empty_lines,
    normalize_answer,
    normalize_math,
    numbers_equal,
    only_blocks,
    parse_number,
    tag_counts,
    token_f1,
    well_formed_blocks,
)

pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------------------------- tags
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>72</answer>", "72"),
        ("<answer>\n  72 \n</answer>", "72"),
        ("<ANSWER>72</Answer>", "72"),  # tag names are matched case-insensitively
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last pair
        ("<answer><answer>1</answer>", "1"),  # the opening tag nearest the last closing one
        ("<answer></answer>", ""),  # present but empty
        ("<answer>72", None),  # cut off before the closing tag
        ("72</answer>", None),
        ("no tags at all", None),
    ],
)
def test_extract_tagged(text: str, expected: str | None) -> None:
    assert extract_tagged(text, "answer") == expected


def test_extract_tagged_accepts_the_tag_with_brackets() -> None:
    assert extract_tagged("<reasoning>why</reasoning>", "<reasoning>") == "why"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<reasoning>r</reasoning><answer>72</answer>", "72"),
        ("<answer>72</answer>\n#### 5", "72"),  # the tag wins over ####
        ("<answer> </answer>\n#### 5", "5"),  # an empty tag falls back to ####
        ("48/2 = 24\n#### 72", "72"),
        ("#### 1\nmore\n#### 1,080  \n", "1,080"),  # the last ####, rest of its line
        ("#### \n", None),  # nothing after the mark
        ("The answer is 72.", None),
        ("<answer>72", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("  Paris \n", "Paris"), ("I think <answer> Paris </answer>", "Paris"), ("<answer></answer> Paris", "")],
)
def test_answer_or_text(text: str, expected: str) -> None:
    assert answer_or_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}} then \boxed{x^{2}+\sqrt{3}}", r"x^{2}+\sqrt{3}"),  # last box, nested braces
        (r"\fbox{7}", "7"),
        (r"$\boxed 5$", "5"),  # no braces: the token after the space
        (r"\boxed{ }", None),
        (r"\boxed{1} and \boxed{2", None),  # the last box never closes: not the earlier one
        (r"\boxedfoo{3}", None),  # another command
        ("no box", None),
        ("\\boxed", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


# ----------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72", 72.0),
        ("-3", -3.0),
        ("+4", 4.0),
        ("3.50", 3.5),
        ("72.0", 72.0),
        (".5", 0.5),
        ("1,080", 1080.0),
        ("1,080.50", 1080.5),
        ("109,200,000", 109200000.0),
        ("$18", 18.0),
        ("$ 18", 18.0),
        ("€5", 5.0),
        ("£1,200", 1200.0),
        ("-$5", -5.0),
        ("$-5", -5.0),
        ("−7", -7.0),  # Unicode minus
        ("72 apples", 72.0),
        ("5 km", 5.0),
        ("5km", 5.0),
        ("25%", 25.0),
        ("25 %", 25.0),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("1 1/2", 1.5),
        ("-1 1/2", -1.5),
        ("2 10/5", 2.0),  # not a mixed number: the last number is 10/5
        ("1½", 1.5),
        ("¾", 0.75),
        (r"\frac{3}{4}", 0.75),
        (r"\dfrac{3}{4}", 0.75),
        (r"-\tfrac{1}{8}", -0.125),
        (r"\frac34", 0.75),
        (r"1{,}080", 1080.0),
        (r"1\,080", 1080.0),
        (r"\$5", 5.0),
        (r"90^\circ", 90.0),
        ("90°", 90.0),
        (r"\boxed{12}", 12.0),
        (r"\text{72 apples}", 72.0),
        ("1e-3", 0.001),
        ("2.5E2", 250.0),
        ("5 + 3 = 8", 8.0),  # several numbers: the last
        ("3-4", 4.0),  # a dash between numbers is not a sign
        ("x-5", 5.0),
        ("(-5)", -5.0),
        ("The answer is 18.", 18.0),
        ("between 1,2 and 3", 3.0),
        ("1,2345", 2345.0),  # not a thousands group: two numbers, the last counts
        ("3/0", None),  # division by zero is not a number
        ("seventy-two", None),
        ("", None),
        (None, None),
        ("9" * 400, None),  # overflows to infinity: not a finite number
    ],
)
def test_parse_number(text: str | None, expected: float | None) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72", 72.0),
        ("1,080", 1080.0),
        ("$-5", -5.0),
        ("25%", 25.0),
        (r"\frac{3}{4}", 0.75),
        (r"-\dfrac{1}{2}", -0.5),
        ("$5$", 5.0),  # math delimiters
        ("x = 5", 5.0),
        ("5.", 5.0),
        (r"10\text{ cm}", 10.0),  # a unit in \text is not part of the value
        (r"90^{\circ}", 90.0),
        ("1 1/2", 1.5),
        ("2 10/5", None),
        (r"\frac{\sqrt{3}}{2}", None),  # not a plain number: no "last number" guess
        ("2x + 1", None),
        ("72 apples", None),
        ("3-4", None),
        ("(1, 2)", None),
    ],
)
def test_parse_number_strict(text: str, expected: float | None) -> None:
    assert parse_number(text, strict=True) == expected


def test_numbers_equal_tolerances() -> None:
    assert numbers_equal(0.1 + 0.2, 0.3)
    assert numbers_equal(1e12 + 1e-4, 1e12)  # relative 1e-16
    assert not numbers_equal(1000.001, 1000.0)  # relative 1e-6
    assert numbers_equal(1e-13, 0.0)  # absolute 1e-12 for a reference of 0
    assert not numbers_equal(1e-6, 0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"$\left( 1, 2 \right)$", "(1,2)"),
        (r"\dfrac{1}{2}.", r"\frac{1}{2}"),
        (r"\tfrac{\pi}{2}", r"\frac{\pi}{2}"),
        (r"3\!\cdot\!4", r"3\cdot4"),
        (r"x \, y", "xy"),
        (r"\leftarrow", r"\leftarrow"),  # a longer command is not \left
    ],
)
def test_normalize_math(text: str, expected: str) -> None:
    assert normalize_math(text) == expected


# ----------------------------------------------------------------------------------------------- choices
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1. the whole text is a letter
        ("C", "C"),
        ("c", "C"),
        ("(C)", "C"),
        ("C.", "C"),
        ("**C**", "C"),
        ("a", "A"),
        # 2. answer statements, the last one
        ("The answer is C.", "C"),
        ("Answer: (B)", "B"),
        ("Final answer: **D**", "D"),
        ("The correct answer is option E", "E"),
        ("I first thought the answer is A, but the answer is B.", "B"),
        ("The answer is B because it fits.", "B"),
        ("A patient with fever. The answer is D", "D"),
        # 3. option/choice mentions naming one letter
        ("Option C fits best.", "C"),
        ("choice (B) is right", "B"),
        # 4. lines starting with a letter
        ("C. Pneumonia\nBecause of the infiltrate.", "C"),
        ("  B) Aspirin", "B"),
        # 5. parenthesised
        ("It is clearly (D) here", "D"),
        ("The answer is not A, it is (C)", "C"),
        # 6. bare letters, the article and the pronoun excluded
        ("Hepatitis B", "B"),
        ("I pick D", "D"),
        ("A patient presents with D", "D"),
        # undecided
        ("A patient presents with fever.", None),  # `A` is the article
        ("I think A is wrong", None),  # `A` followed by a word reads as the article: nothing decides
        ("the answer is a virus", None),  # lower-case after the statement is not a letter
        ("A. one\nB. two", None),  # two letters at line starts, nothing else decides
        ("Between B and D", None),
        ("Vitamin B12 deficiency", None),  # a letter inside a token
        ("The answer is F", None),  # not one of A-E
        ("", None),
    ],
)
def test_extract_choice_letter(text: str, expected: str | None) -> None:
    assert extract_choice_letter(text) == expected


def test_extract_choice_letter_with_more_options() -> None:
    assert extract_choice_letter("The answer is F", "ABCDEFG") == "F"
    assert extract_choice_letter("(c)", "ab") is None  # c is not an option
    assert extract_choice_letter("(b)", "ab") == "B"
    assert extract_choice_letter("B", "") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is yes.", "yes"),
        ("Final answer: Maybe", "maybe"),
        ("Decision: **NO**", "no"),
        ("The answer is maybe at first, but the answer is no.", "no"),  # the last statement
        ("No.", "no"),
        ("Yes, because the trial shows it.", "yes"),
        ("Yes\nThe trial shows it.", "yes"),
        ("**maybe**", "maybe"),
        ("The evidence is mixed, so maybe.", "maybe"),
        ("No significant difference was found, and the answer is yes.", "yes"),
        ("No significant difference was found.", None),  # `No` followed by a word is not a decision
        ("There is no evidence that it works", None),
        ("Unclear", None),
        ("", None),
    ],
)
def test_extract_yes_no_maybe(text: str, expected: str | None) -> None:
    assert extract_yes_no_maybe(text) == expected


# ----------------------------------------------------------------------------------------------- short answers
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theatre", "theatre"),  # `the` only as a whole word
        ("“Quoted” — dash", "quoted dash"),  # Unicode punctuation
        ("well-known", "wellknown"),  # SQuAD removes punctuation without a space
        ("The", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the Eiffel tower.", "Eiffel Tower", 1.0),
        ("Paris, France", "Paris", 0.0),
        ("Lyon", ["Paris", "lyon"], 1.0),  # any of the references
        ("Lyon", [], 0.0),
    ],
)
def test_exact_match(prediction: str, reference: str | list[str], expected: float) -> None:
    assert exact_match(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # tokens [cat, sat] vs [cat, sat, down]: P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
        ("the cat sat", "cat sat down", 0.8),
        # [x, y, y, z] vs [y, y, y, w]: shared y twice, P = R = 1/2, F1 = 0.5
        ("x y y z", "y y y w", 0.5),
        ("Paris", "Paris", 1.0),
        ("Paris", "Lyon", 0.0),
        ("cat", ["dog", "cat sat down", "cat"], 1.0),  # the best reference
        ("cat", ["dog", "cat sat"], 2 * 1 * 0.5 / 1.5),  # P = 1, R = 1/2
        ("the", "a", 1.0),  # both normalise to nothing
        ("the", "cat", 0.0),
        ("cat", [], 0.0),
    ],
)
def test_token_f1(prediction: str, reference: str | list[str], expected: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------------- layout
GOOD = "<reasoning>\nfirst\nsecond\n</reasoning>\n<answer>\n72\n</answer>"


def test_tag_counts_are_exact_and_case_sensitive() -> None:
    text = "<reasoning>a</reasoning><reasoning><ANSWER>"
    assert tag_counts(text) == {"<reasoning>": 2, "</reasoning>": 1, "<answer>": 0, "</answer>": 0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, ("first\nsecond", "72")),
        ("Sure! " + GOOD + " Done.", ("first\nsecond", "72")),  # text outside is allowed here
        ("<answer>72</answer><reasoning>r</reasoning>", None),  # wrong order
        ("<reasoning>r<answer>72</reasoning></answer>", None),  # interleaved
        ("<reasoning> </reasoning><answer>72</answer>", None),  # blank reasoning
        ("<reasoning>r</reasoning><answer></answer>", None),  # blank answer
        ("<reasoning>r</reasoning><answer>1</answer><answer>2</answer>", None),  # a tag twice
        ("<answer>72</answer>", None),
    ],
)
def test_well_formed_blocks(text: str, expected: tuple[str, str] | None) -> None:
    assert well_formed_blocks(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, True),
        ("\n  " + GOOD + "\n\n", True),
        ("<reasoning>r</reasoning><answer>72</answer>", True),
        ("Sure! " + GOOD, False),
        (GOOD + " Done.", False),
        ("<reasoning>r</reasoning> so <answer>72</answer>", False),
        ("<reasoning>r</reasoning><answer></answer>", False),
    ],
)
def test_only_blocks(text: str, expected: bool) -> None:
    assert only_blocks(text) is expected


def test_non_empty_lines() -> None:
    assert non_empty_lines("a\n\n  \nb\n c") == 3
    assert non_empty_lines("") == 0
