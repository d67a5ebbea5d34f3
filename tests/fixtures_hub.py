"""Rows in the hub layout of the named datasets that are not in ../shared/data, and where the others' real files are.

`hub_rows(name)` gives a few rows shaped exactly like the hub copy (column names, nesting, JSON-encoded fields), so a
named dataset's own mapping reads them as it would read the hub; `dataset_file(name, directory)` gives a local file
for any named dataset: the real file in ../shared/data where there is one, else these rows written as JSONL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import shared

# Named dataset -> its real file in ../shared/data (split -> file; `train` is used for every other split).
SHARED_FILES: dict[str, dict[str, str]] = {
    "arc": {"train": "arc/ARC-Challenge-Train.jsonl", "eval": "arc/ARC-Challenge-Dev.jsonl"},
    "gsm8k": {"train": "gsm8k/train.jsonl"},
    "medqa": {"train": "medqa/US/4_options/phrases_no_exclude_dev.jsonl"},
    "pubmedqa": {"train": "pubmedqa/ori_pqal.json"},
    "hotpotqa": {"train": "hotpotqa/hotpot_dev_v1_simplified.json"},
    "freshqa": {"train": "freshqa/freshqa.csv"},
    "kto_mix": {"train": "llamafactory_demo/kto_en_demo.json"},  # LLaMA-Factory's messages + label layout
    "alpaca": {"train": "alpaca/alpaca_first100.torchtune_alpaca_tiny.json"},
    "hh_rlhf": {"train": "hh_rlhf/helpful-base/test.jsonl.gz"},
}

FACTS = [
    ("Which planet is known as the Red Planet?", "Mars", ["Mars", "planet Mars"]),
    ("What is the capital of Australia?", "Canberra", ["Canberra"]),
    ("Who wrote Pride and Prejudice?", "Jane Austen", ["Jane Austen", "Austen"]),
    ("What gas do plants absorb from the air?", "Carbon dioxide", ["Carbon dioxide", "CO2"]),
    ("How many sides does a hexagon have?", "Six", ["Six", "6"]),
    ("What is the largest ocean on Earth?", "Pacific Ocean", ["Pacific Ocean", "Pacific"]),
    ("Which element has the symbol Fe?", "Iron", ["Iron"]),
    ("In which country is the city of Kyoto?", "Japan", ["Japan"]),
]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _triviaqa(i: int, question: str, answer: str, aliases: list[str]) -> dict[str, Any]:
    return {
        "question": question,
        "question_id": f"tc_{i}",
        "question_source": "http://www.example.org/",
        "entity_pages": {
            "doc_source": ["TagMe"],
            "filename": [f"{answer}.txt"],
            "title": [answer],
            "wiki_context": [f"{answer} is the answer to: {question}"],
        },
        "search_results": {
            "description": [""],
            "filename": [f"{i}.txt"],
            "rank": [0],
            "title": [f"About {answer}"],
            "url": ["http://example.org"],
            "search_context": [f"Many sources agree: {answer}."],
        },
        "answer": {
            "aliases": aliases,
            "normalized_aliases": [a.lower() for a in aliases],
            "matched_wiki_entity_name": "",
            "normalized_matched_wiki_entity_name": "",
            "normalized_value": answer.lower(),
            "type": "WikipediaEntity",
            "value": answer,
        },
    }


def _musique(i: int, question: str, answer: str, aliases: list[str]) -> dict[str, Any]:
    return {
        "id": f"2hop__{i}",
        "paragraphs": [
            {"idx": 0, "title": answer, "paragraph_text": f"{answer} answers: {question}", "is_supporting": True},
            {"idx": 1, "title": "Distractor", "paragraph_text": "An unrelated paragraph.", "is_supporting": False},
        ],
        "question": question,
        "question_decomposition": [],
        "answer": answer,
        "answer_aliases": aliases,
        "answerable": True,
    }


def _openr1(i: int) -> dict[str, Any]:
    a, b = i + 2, 2 * i + 3
    return {
        "problem": f"What is {a} + {b}?",
        "solution": f"{a} + {b} = {a + b}, so the answer is $\\boxed{{{a + b}}}$.",
        "answer": str(a + b),
        "uuid": f"u{i}",
        "generations": [f"<think>{a} plus {b} is {a + b}.</think> \\boxed{{{a + b}}}"],
        "correctness_math_verify": [True],
        "is_reasoning_complete": [True],
    }


def _ultrafeedback(i: int, question: str, answer: str) -> dict[str, Any]:
    chosen = [_user(question), _assistant(f"{answer}.")]
    rejected = [_user(question), _assistant("I am not sure.")]
    return {
        "prompt": question,
        "prompt_id": f"p{i}",
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        "score_chosen": 9.0,
        "score_rejected": 3.0,
    }


def _webgpt(i: int, question: str, answer: str) -> dict[str, Any]:
    better_first = i % 2 == 0
    good, bad = f"{answer}, as several sources confirm.", "Nobody knows."
    return {
        "question": {"dataset": "eli5", "id": f"q{i}", "full_text": question},
        "quotes_0": {"title": [], "extract": []},
        "answer_0": good if better_first else bad,
        "tokens_0": [],
        "score_0": 1.0 if better_first else -1.0,
        "quotes_1": {"title": [], "extract": []},
        "answer_1": bad if better_first else good,
        "tokens_1": [],
        "score_1": -1.0 if better_first else 1.0,
    }


def hub_rows(name: str) -> list[dict[str, Any]]:
    """Eight rows of the named dataset in its hub layout."""
    if name == "glaive_toolcall":
        from tests.tool_fixtures import sharegpt_rows

        return sharegpt_rows(2)
    rows: list[dict[str, Any]] = []
    for i, (question, answer, aliases) in enumerate(FACTS):
        if name == "triviaqa":
            rows.append(_triviaqa(i, question, answer, aliases))
        elif name == "factscore":
            person = ["Ada Lovelace", "Alan Turing", "Marie Curie", "Nikola Tesla"][i % 4]
            rows.append(
                {
                    "input": f"Question: Tell me a bio of {person}.",
                    "output": f"{person} was a scientist whose work is still studied today.",
                    "topic": person,
                    "ctxs": [{"title": person, "text": f"{person} ..."}],
                }
            )
        elif name == "popqa":
            rows.append(
                {
                    "id": i,
                    "subj": answer,
                    "prop": "occupation",
                    "obj": answer,
                    "question": question,
                    "possible_answers": json.dumps(aliases),
                    "s_pop": 100 + i,
                }
            )
        elif name == "earnings_calls":
            rows.append(
                {
                    "question": f"What did the CFO say about revenue in quarter {i % 4 + 1}?",
                    "answer": f"Revenue grew {10 + i}% year over year.",
                    "transcript": f"Operator: Welcome. CFO: Revenue grew {10 + i}% year over year.",
                    "q": f"2023-Q{i % 4 + 1}",
                    "ticker": "ACME",
                    "company": "Acme Corp",
                    "date": "2023-04-20",
                }
            )
        elif name == "openr1_math":
            rows.append(_openr1(i))
        elif name == "musique":
            rows.append(_musique(i, question, answer, aliases))
        elif name == "bioasq":
            rows.append({"question": question, "answer": f"{answer}.", "id": i})
        elif name == "ultrafeedback":
            rows.append(_ultrafeedback(i, question, answer))
        elif name == "webgpt":
            rows.append(_webgpt(i, question, answer))
        elif name == "kto_mix":
            completion = answer if i % 2 == 0 else "I do not know."
            rows.append({"prompt": [_user(question)], "completion": [_assistant(completion)], "label": i % 2 == 0})
        else:
            raise KeyError(f"no hub-layout fixture rows for dataset `{name}`")
    return rows


def dataset_file(name: str, directory: Path, split: str = "train") -> Path:
    """A local file in the layout of the named dataset: the real one in ../shared/data, else fixture rows."""
    if name in SHARED_FILES:
        files = SHARED_FILES[name]
        return shared(files.get(split, files["train"]))
    path = directory / f"{name}.jsonl"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in hub_rows(name)), encoding="utf-8")
    return path
