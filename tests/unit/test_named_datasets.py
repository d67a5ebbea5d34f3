"""Named datasets: registry, every row of the real files, exact records per dataset, context clipping, test splits
and the loss mask on a real GSM8K example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_finetuning.config.schema import DataSource
from llm_finetuning.data.datasets import registry
from llm_finetuning.data.datasets import triviaqa as triviaqa_module
from llm_finetuning.data.datasets._common import CLIP_MARKER, MAX_CONTEXT_CHARS, clip
from llm_finetuning.data.formats import FORMAT_KIND, RowError
from llm_finetuning.data.pipeline import SplitStats, load_records
from llm_finetuning.data.tokenize import IGNORE_INDEX, encode
from llm_finetuning.errors import ConfigError
from llm_finetuning.models.tiny import build_tokenizer
from tests.conftest import shared

pytestmark = pytest.mark.unit

QA_DATASETS = [
    "arc",
    "triviaqa",
    "factscore",
    "popqa",
    "earnings_calls",
    "gsm8k",
    "openr1_math",
    "hotpotqa",
    "freshqa",
    "musique",
    "medqa",
    "bioasq",
    "pubmedqa",
]
ALL_DATASETS = [*QA_DATASETS, "ultrafeedback", "webgpt", "kto_mix", "alpaca", "hh_rlhf", "glaive_toolcall"]
DATASETS = registry()


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def convert(name: str, kind: str, row: dict[str, Any]) -> dict[str, Any]:
    return DATASETS[name].converters[kind](row)


def load(name: str, path: Path, kind: str, **fields: Any) -> tuple[list[dict[str, Any]], SplitStats]:
    stats = SplitStats()
    records = load_records(DataSource(dataset=name, path=str(path), **fields), "skip", stats, kind)
    return [record for _, record in records], stats


def write_rows(tmp_path: Path, rows: list[dict[str, Any]], name: str = "rows.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------------------------------------ registry
def test_registry_has_every_dataset_with_hub_id_splits_description_and_converters():
    assert sorted(DATASETS) == sorted(ALL_DATASETS)
    for name, dataset in DATASETS.items():
        assert dataset.name == name
        assert "/" in dataset.hub_id, name
        assert dataset.splits and "train" in dataset.splits, name
        assert dataset.description and "\n" not in dataset.description, name
        assert dataset.converters and set(dataset.converters) <= set(FORMAT_KIND.values()), name
    for name in QA_DATASETS:
        assert {"messages", "prompt_only"} <= set(DATASETS[name].converters), name
    assert DATASETS["gsm8k"].hub_id == "openai/gsm8k" and DATASETS["gsm8k"].subset == "main"
    assert DATASETS["arc"].hub_id == "allenai/ai2_arc" and DATASETS["arc"].subset == "ARC-Challenge"
    assert DATASETS["triviaqa"].subset == "rc" and DATASETS["hotpotqa"].subset == "distractor"
    assert DATASETS["pubmedqa"].subset == "pqa_labeled"
    assert DATASETS["ultrafeedback"].splits == {"train": "train_prefs", "test": "test_prefs"}
    assert "test_prefs" in DATASETS["ultrafeedback"].test_splits


# ----------------------------------------------------------------------------------- every row of real files
REAL_FILES = [
    # (dataset, file under ../shared/data, rows, genuinely bad rows per kind)
    ("gsm8k", "gsm8k/train.jsonl", 7473, {}),
    ("gsm8k", "gsm8k/test.jsonl", 1319, {}),
    ("arc", "arc/ARC-Challenge-Train.jsonl", 1119, {}),
    ("arc", "arc/ARC-Challenge-Dev.jsonl", 299, {}),
    ("arc", "arc/ARC-Easy-Train.jsonl", 2251, {}),
    ("arc", "arc/ARC-Easy-Dev.jsonl", 570, {}),
    ("arc", "arc/ARC-Challenge-Test.hf_schema.jsonl", 1172, {}),  # the hub layout
    ("medqa", "medqa/US/test.jsonl", 1273, {}),
    ("medqa", "medqa/US/dev.jsonl", 1272, {}),
    ("medqa", "medqa/US/4_options/phrases_no_exclude_test.jsonl", 1273, {}),
    ("medqa", "medqa/US/4_options/phrases_no_exclude_dev.jsonl", 1272, {}),
    ("pubmedqa", "pubmedqa/ori_pqal.json", 1000, {}),
    ("hotpotqa", "hotpotqa/hotpot_dev_v1_simplified.json", 7405, {}),
    ("freshqa", "freshqa/freshqa.csv", 600, {}),
    ("alpaca", "alpaca/alpaca_first100.torchtune_alpaca_tiny.json", 100, {}),
    ("alpaca", "alpaca/alpaca_sample2000.alpaca_small.json", 2000, {}),
    ("alpaca", "llamafactory_demo/alpaca_en_demo.json", 999, {}),
    # 4 pairs whose rejected reply is empty and 2 whose chosen and rejected are identical: no preference.
    ("hh_rlhf", "hh_rlhf/helpful-base/test.jsonl.gz", 2354, {"preference": 6}),
    ("kto_mix", "llamafactory_demo/kto_en_demo.json", 300, {}),  # LLaMA-Factory's messages + label layout
]


@pytest.mark.parametrize(("name", "relative", "rows", "bad"), REAL_FILES, ids=[r[1] for r in REAL_FILES])
def test_every_row_of_the_real_files_parses(name, relative, rows, bad):
    path = shared(relative)
    for kind in DATASETS[name].converters:
        records, stats = load(name, path, kind)
        expected_bad = bad.get(kind, 0)
        assert stats.rows == rows, kind
        assert stats.skipped_bad_rows == expected_bad, stats.bad_rows[:3]
        assert len(records) == rows - expected_bad
        for record in records:
            if kind == "messages":
                assert [m["role"] for m in record["messages"]][-2:] == ["user", "assistant"]
                assert record["messages"][-1]["content"].strip()
            elif kind == "prompt_only":
                assert record["prompt"][-1]["role"] == "user" and record["prompt"][-1]["content"].strip()
            elif kind == "preference":
                assert record["chosen"][-1]["role"] == record["rejected"][-1]["role"] == "assistant"
                assert record["chosen"] != record["rejected"]


# ------------------------------------------------------------------------- exact records, real-file datasets
NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
GSM8K_PROMPT = (
    "Solve the math problem. Reason step by step, then give the final answer on the last line as `#### <number>`."
    "\n\nProblem: {}"
)


def test_gsm8k_exact_records():
    prompt = GSM8K_PROMPT.format(NATALIA["question"])
    assert convert("gsm8k", "messages", NATALIA) == {"messages": [user(prompt), assistant(NATALIA["answer"])]}
    assert convert("gsm8k", "prompt_only", NATALIA) == {"prompt": [user(prompt)], "answer": "72"}
    thousands = {"question": "q", "answer": "2 * 540 = 1080\n#### 1,080"}
    assert convert("gsm8k", "prompt_only", thousands)["answer"] == "1080"
    with pytest.raises(RowError, match="####"):
        convert("gsm8k", "messages", {"question": "q", "answer": "no final line"})


ARC_PROMPT = (
    "George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?\n\n"
    "A. dry palms\nB. wet palms\nC. palms covered with oil\nD. palms covered with lotion\n\n"
    "Answer with the letter of the correct option."
)
ARC_TEXTS = ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"]
ARC_STEM = "George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?"


def test_arc_exact_records_in_ai2_and_hub_layouts():
    ai2 = {
        "id": "Mercury_SC_415702",
        "question": {"stem": ARC_STEM, "choices": [{"text": t, "label": "ABCD"[i]} for i, t in enumerate(ARC_TEXTS)]},
        "answerKey": "A",
    }
    hub = {"id": "Mercury_SC_415702", "question": ARC_STEM, "choices": {"text": ARC_TEXTS, "label": list("ABCD")}}
    hub["answerKey"] = "A"
    expected = {"messages": [user(ARC_PROMPT), assistant("The answer is A.")]}
    assert convert("arc", "messages", ai2) == convert("arc", "messages", hub) == expected
    assert convert("arc", "prompt_only", hub) == {
        "prompt": [user(ARC_PROMPT)],
        "answer": "A",
        "answer_text": "dry palms",
    }
    numeric = {"question": ARC_STEM, "choices": {"text": ARC_TEXTS, "label": list("1234")}, "answerKey": "3"}
    assert convert("arc", "messages", numeric)["messages"][0]["content"] == ARC_PROMPT
    assert convert("arc", "prompt_only", numeric)["answer"] == "C"
    with pytest.raises(RowError, match="answerKey"):
        convert("arc", "messages", {**hub, "answerKey": "E"})


MEDQA_QUESTION = (
    "A 21-year-old sexually active male complains of fever, pain during urination, and inflammation and pain in the "
    "right knee. Which antibiotic is the best choice?"
)
MEDQA_OPTIONS = {
    "A": "Chloramphenicol",
    "B": "Gentamicin",
    "C": "Ciprofloxacin",
    "D": "Ceftriaxone",
    "E": "Trimethoprim",
}
MEDQA_PROMPT = (
    f"{MEDQA_QUESTION}\n\nA. Chloramphenicol\nB. Gentamicin\nC. Ciprofloxacin\nD. Ceftriaxone\nE. Trimethoprim\n\n"
    "Answer with the letter of the correct option."
)


def test_medqa_exact_records_in_its_layouts():
    original = {
        "question": MEDQA_QUESTION,
        "answer": "Ceftriaxone",
        "options": MEDQA_OPTIONS,
        "meta_info": "step1",
        "answer_idx": "D",
    }
    assert convert("medqa", "messages", original) == {"messages": [user(MEDQA_PROMPT), assistant("D. Ceftriaxone")]}
    assert convert("medqa", "prompt_only", original) == {
        "prompt": [user(MEDQA_PROMPT)],
        "answer": "D",
        "answer_text": "Ceftriaxone",
    }
    bigbio_source = {
        "question": MEDQA_QUESTION,
        "answer": "Ceftriaxone",
        "options": [{"key": k, "value": v} for k, v in MEDQA_OPTIONS.items()],
        "answer_idx": "D",
    }
    bigbio_qa = {"question": MEDQA_QUESTION, "choices": list(MEDQA_OPTIONS.values()), "answer": ["Ceftriaxone"]}
    for row in (bigbio_source, bigbio_qa):
        assert convert("medqa", "messages", row) == convert("medqa", "messages", original)
    with pytest.raises(RowError, match="does not match option"):
        convert("medqa", "messages", {**original, "answer_idx": "A"})


PUBMED_PROMPT = (
    "Abstract:\nBACKGROUND: Lace plants form holes in their leaves.\n\nRESULTS: Mitochondria change before the holes "
    "form.\n\nQuestion: Do mitochondria play a role in remodelling lace plant leaves?\n\n"
    "Explain briefly from the abstract, then end with `The answer is yes.`, `no.` or `maybe.`"
)
PUBMED_COMPLETION = "Mitochondrial dynamics track the progression of cell death.\n\nThe answer is yes."


def test_pubmedqa_exact_records_from_the_keyed_file_and_the_hub_layout(tmp_path):
    original = {
        "21645374": {
            "QUESTION": "Do mitochondria play a role in remodelling lace plant leaves?",
            "CONTEXTS": ["Lace plants form holes in their leaves.", "Mitochondria change before the holes form."],
            "LABELS": ["BACKGROUND", "RESULTS"],
            "MESHES": ["Mitochondria"],
            "YEAR": "2011",
            "final_decision": "yes",
            "LONG_ANSWER": "Mitochondrial dynamics track the progression of cell death.",
        }
    }
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(original, indent=2))
    (messages,), stats = load("pubmedqa", path, "messages")
    assert stats.skipped_bad_rows == 0
    assert messages == {"messages": [user(PUBMED_PROMPT), assistant(PUBMED_COMPLETION)]}
    hub = {
        "pubid": 21645374,
        "question": "Do mitochondria play a role in remodelling lace plant leaves?",
        "context": {
            "contexts": ["Lace plants form holes in their leaves.", "Mitochondria change before the holes form."],
            "labels": ["BACKGROUND", "RESULTS"],
            "meshes": ["Mitochondria"],
        },
        "long_answer": "Mitochondrial dynamics track the progression of cell death.",
        "final_decision": "yes",
    }
    assert convert("pubmedqa", "messages", hub) == messages
    assert convert("pubmedqa", "prompt_only", hub) == {
        "prompt": [user(PUBMED_PROMPT)],
        "answer": "yes",
        "long_answer": "Mitochondrial dynamics track the progression of cell death.",
    }
    with pytest.raises(RowError, match="yes, no or maybe"):
        convert("pubmedqa", "messages", {**hub, "final_decision": "probably"})


HOTPOT_HUB = {
    "id": "5a8b57f25542995d1e6f1371",
    "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
    "answer": "yes",
    "type": "comparison",
    "level": "hard",
    "supporting_facts": {"title": ["Scott Derrickson", "Ed Wood"], "sent_id": [0, 0]},
    "context": {
        "title": ["Adam Collis", "Scott Derrickson", "Ed Wood"],
        "sentences": [
            ["Adam Collis is an American filmmaker", " and actor."],
            ["Scott Derrickson is an American director."],
            ["Edward Davis Wood Jr. was an American filmmaker."],
        ],
    },
}
HOTPOT_TAIL = (
    "Question: Were Scott Derrickson and Ed Wood of the same nationality?\n\nAnswer with a short phrase, or yes or no."
)


def test_hotpotqa_exact_records_with_and_without_context():
    prompt = (
        "Passages:\n# Adam Collis\nAdam Collis is an American filmmaker and actor.\n\n# Scott Derrickson\n"
        "Scott Derrickson is an American director.\n\n# Ed Wood\nEdward Davis Wood Jr. was an American filmmaker."
        f"\n\n{HOTPOT_TAIL}"
    )
    assert convert("hotpotqa", "messages", HOTPOT_HUB) == {"messages": [user(prompt), assistant("yes")]}
    assert convert("hotpotqa", "prompt_only", HOTPOT_HUB) == {
        "prompt": [user(prompt)],
        "answer": "yes",
        "type": "comparison",
    }
    simplified = {"question": HOTPOT_HUB["question"], "answer": "yes", "type": "comparison"}
    assert convert("hotpotqa", "messages", simplified) == {"messages": [user(HOTPOT_TAIL), assistant("yes")]}
    original_json = {
        **simplified,
        "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]],
        "context": [
            [t, s] for t, s in zip(HOTPOT_HUB["context"]["title"], HOTPOT_HUB["context"]["sentences"], strict=True)
        ],
    }
    assert convert("hotpotqa", "messages", original_json)["messages"][0]["content"] == prompt


FRESHQA_CSV = (
    "id,split,question,effective_year,next_review,false_premise,num_hops,fact_type,source,"
    + ",".join(f"answer_{i}" for i in range(10))
    + ",note\n"
    "0,TEST,What is the name of the first animal to land on the moon?,before 2022,occasionally,TRUE,one-hop,"
    'slow-changing,"https://en.wikipedia.org/wiki/Animals_in_space\nhttps://en.wikipedia.org/wiki/Neil_Armstrong",'
    'No animal has ever landed on the moon yet.,"Since humans are animals, one could say Neil Armstrong."'
    + ","
    * 8
    + ",\n"
    "7,DEV,Who wrote Hamlet?,never,never,FALSE,one-hop,never-changing,,William Shakespeare,Shakespeare"
    + "," * 8
    + ",\n"
)
FRESHQA_SUFFIX = "\n\nAnswer concisely. If the question rests on a false premise, say so."


def test_freshqa_exact_records_from_the_sheet_csv(tmp_path):
    path = tmp_path / "freshqa.csv"
    path.write_text(FRESHQA_CSV)
    records, stats = load("freshqa", path, "prompt_only")
    assert stats.skipped_bad_rows == 0
    moon = "Question: What is the name of the first animal to land on the moon?" + FRESHQA_SUFFIX
    assert records == [
        {
            "answers": [
                "No animal has ever landed on the moon yet.",
                "Since humans are animals, one could say Neil Armstrong.",
            ],
            "split": "TEST",
            "false_premise": True,
            "fact_type": "slow-changing",
            "prompt": [user(moon)],
        },
        {
            "answers": ["William Shakespeare", "Shakespeare"],
            "split": "DEV",
            "false_premise": False,
            "fact_type": "never-changing",
            "prompt": [user("Question: Who wrote Hamlet?" + FRESHQA_SUFFIX)],
        },
    ]
    messages, _ = load("freshqa", path, "messages")
    assert messages[0] == {"messages": [user(moon), assistant("No animal has ever landed on the moon yet.")]}


def test_alpaca_and_hh_rlhf_exact_records():
    row = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "text": "ignored"}
    assert convert("alpaca", "messages", row) == {
        "messages": [user("Translate to French.\n\nGood morning"), assistant("Bonjour")]
    }
    with pytest.raises(RowError, match="output"):
        convert("alpaca", "messages", {"instruction": "x", "input": "", "output": "  "})
    shared_turns = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?"
    pair = {"chosen": shared_turns + "\n\nAssistant: 4.", "rejected": shared_turns + "\n\nAssistant: 5."}
    prompt = [user("Hi"), assistant("Hello!"), user("What is 2+2?")]
    assert convert("hh_rlhf", "preference", pair) == {
        "prompt": prompt,
        "chosen": [assistant("4.")],
        "rejected": [assistant("5.")],
    }
    assert convert("hh_rlhf", "prompt_only", pair) == {"prompt": prompt}


# ---------------------------------------------------------------- exact records, hub-layout fixture rows
def test_triviaqa_hub_rows(tmp_path):
    answer = {
        "aliases": ["Sunset Blvd", "Sunset Boulevard", "Sunset Blvd"],
        "normalized_aliases": ["sunset blvd", "sunset boulevard"],
        "matched_wiki_entity_name": "",
        "normalized_matched_wiki_entity_name": "",
        "normalized_value": "sunset boulevard",
        "type": "WikipediaEntity",
        "value": "Sunset Boulevard",
    }
    with_evidence = {
        "question": "Which Lloyd Webber musical premiered in the US on 10th December 1993?",
        "question_id": "tc_33",
        "question_source": "http://www.triviacountry.com/",
        "entity_pages": {
            "doc_source": ["TagMe"],
            "filename": ["Andrew_Lloyd_Webber.txt"],
            "title": ["Andrew Lloyd Webber"],
            "wiki_context": ["Andrew Lloyd Webber wrote Sunset Boulevard."],
        },
        "search_results": {
            "description": ["..."],
            "filename": ["1.txt"],
            "rank": [0],
            "title": ["Sunset Boulevard (musical)"],
            "url": ["http://example.org"],
            "search_context": ["It opened on Broadway in 1994."],
        },
        "answer": answer,
    }
    closed_book = {
        **with_evidence,
        "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
        "search_results": {
            "description": [],
            "filename": [],
            "rank": [],
            "title": [],
            "url": [],
            "search_context": [],
        },
    }
    path = write_rows(tmp_path, [with_evidence, closed_book])
    question = "Question: Which Lloyd Webber musical premiered in the US on 10th December 1993?"
    evidence = (
        "Evidence:\n# Andrew Lloyd Webber\nAndrew Lloyd Webber wrote Sunset Boulevard.\n\n"
        "# Sunset Boulevard (musical)\nIt opened on Broadway in 1994.\n\n"
    )
    suffix = "\n\nAnswer with a short phrase."
    records, stats = load("triviaqa", path, "messages")
    assert stats.skipped_bad_rows == 0
    assert records == [
        {"messages": [user(evidence + question + suffix), assistant("Sunset Boulevard")]},
        {"messages": [user(question + suffix), assistant("Sunset Boulevard")]},
    ]
    records, _ = load("triviaqa", path, "prompt_only")
    assert records[0] == {
        "answers": ["Sunset Boulevard", "Sunset Blvd"],
        "prompt": [user(evidence + question + suffix)],
    }


def test_factscore_hub_rows(tmp_path):
    rows = [
        {
            "input": "Question: Tell me a bio of Ada Lovelace.",
            "output": "Ada Lovelace was an English mathematician.",
            "topic": "Ada Lovelace",
            "ctxs": [{"title": "Ada Lovelace", "text": "Augusta Ada King, Countess of Lovelace ..."}],
        },
        {"input": "Question: Tell me a bio of Alan Turing.", "output": "", "topic": "Alan Turing", "ctxs": []},
    ]
    records, stats = load("factscore", write_rows(tmp_path, rows), "messages")
    assert records == [
        {
            "messages": [
                user("Question: Tell me a bio of Ada Lovelace."),
                assistant("Ada Lovelace was an English mathematician."),
            ]
        }
    ]
    assert stats.skipped_bad_rows == 1 and "`output` is empty" in stats.bad_rows[0]
    assert convert("factscore", "prompt_only", rows[0]) == {
        "prompt": [user("Question: Tell me a bio of Ada Lovelace.")],
        "topic": "Ada Lovelace",
    }


def test_popqa_hub_rows_keep_every_possible_answer(tmp_path):
    rows = [
        {
            "id": 4222362,
            "subj": "George Rankin",
            "prop": "occupation",
            "obj": "politician",
            "question": "What is George Rankin's occupation?",
            "possible_answers": json.dumps(["politician", "political leader", "political figure"]),
            "s_pop": 142,
        },
        {"id": 1, "question": "In what country is Chadwick?", "possible_answers": "not json"},
    ]
    prompt = "Question: What is George Rankin's occupation?\n\nAnswer with a short phrase."
    records, stats = load("popqa", write_rows(tmp_path, rows), "prompt_only", split="test")
    assert records == [{"answers": ["politician", "political leader", "political figure"], "prompt": [user(prompt)]}]
    assert stats.skipped_bad_rows == 1 and "JSON-encoded" in stats.bad_rows[0]
    assert convert("popqa", "messages", rows[0]) == {"messages": [user(prompt), assistant("politician")]}


def test_earnings_calls_hub_rows(tmp_path):
    rows = [
        {
            "question": "What was the revenue growth in the quarter?",
            "answer": "Revenue grew 12% year over year.",
            "transcript": "Operator: Welcome. CFO: Revenue grew 12% year over year to $1.2 billion.",
            "q": "2023-Q1",
            "ticker": "ACME",
            "company": "Acme Corp",
            "date": "2023-04-20",
        },
        {"question": "Any guidance?", "answer": "No guidance was given.", "transcript": "CEO: We do not guide."},
    ]
    records, stats = load("earnings_calls", write_rows(tmp_path, rows), "prompt_only")
    assert stats.skipped_bad_rows == 0
    assert records == [
        {
            "answer": "Revenue grew 12% year over year.",
            "prompt": [
                user(
                    "Earnings call transcript of Acme Corp (ACME), 2023-Q1, 2023-04-20:\n"
                    "Operator: Welcome. CFO: Revenue grew 12% year over year to $1.2 billion.\n\n"
                    "Question: What was the revenue growth in the quarter?\n\nAnswer from the transcript."
                )
            ],
        },
        {
            "answer": "No guidance was given.",
            "prompt": [
                user(
                    "Earnings call transcript:\nCEO: We do not guide.\n\nQuestion: Any guidance?\n\n"
                    "Answer from the transcript."
                )
            ],
        },
    ]


def test_openr1_math_hub_rows_prefer_a_verified_trace(tmp_path):
    base = {"problem": "What is 1+1?", "solution": "1+1=2, so $\\boxed{2}$.", "answer": "2", "uuid": "u1"}
    rows = [
        {
            **base,
            "generations": ["<think>1+1=3</think> \\boxed{3}", "<think>1+1=2</think> \\boxed{2}"],
            "correctness_math_verify": [False, True],
            "is_reasoning_complete": [True, True],
        },
        {**base, "generations": ["<think>hm</think> \\boxed{3}"], "correctness_math_verify": [False]},
    ]
    prompt = "What is 1+1?\n\nReason step by step and put your final answer within \\boxed{}."
    records, stats = load("openr1_math", write_rows(tmp_path, rows), "messages")
    assert stats.skipped_bad_rows == 0
    assert records == [
        {"messages": [user(prompt), assistant("<think>1+1=2</think> \\boxed{2}")]},
        {"messages": [user(prompt), assistant("1+1=2, so $\\boxed{2}$.")]},
    ]
    assert convert("openr1_math", "prompt_only", rows[0]) == {"prompt": [user(prompt)], "answer": "2"}


def test_musique_hub_rows(tmp_path):
    paragraphs = [
        {"idx": 0, "title": "Green", "paragraph_text": "Green is the president of Big Bank.", "is_supporting": True},
        {"idx": 1, "title": "Blue", "paragraph_text": "Blue is a colour.", "is_supporting": False},
    ]
    rows = [
        {
            "id": "2hop__1",
            "paragraphs": paragraphs,
            "question": "Who is the president of Big Bank?",
            "question_decomposition": [],
            "answer": "Green",
            "answer_aliases": ["Mr. Green", "Green"],
            "answerable": True,
        },
        {"id": "2hop__2", "paragraphs": paragraphs, "question": "Who?", "answer": "x", "answerable": False},
    ]
    prompt = (
        "Passages:\n# Green\nGreen is the president of Big Bank.\n\n# Blue\nBlue is a colour.\n\n"
        "Question: Who is the president of Big Bank?\n\nAnswer with a short phrase."
    )
    records, stats = load("musique", write_rows(tmp_path, rows), "prompt_only")
    assert records == [{"answers": ["Green", "Mr. Green"], "prompt": [user(prompt)]}]
    assert stats.skipped_bad_rows == 1 and "answerable" in stats.bad_rows[0]
    assert convert("musique", "messages", rows[0]) == {"messages": [user(prompt), assistant("Green")]}


def test_bioasq_hub_rows(tmp_path):
    rows = [
        {"question": "Is BRCA1 a tumour suppressor?", "answer": "Yes, BRCA1 is a tumour suppressor gene.", "id": 1},
        {"question": "What does TNF stand for?", "answer": "Tumour necrosis factor.", "id": 2},
    ]
    records, _ = load("bioasq", write_rows(tmp_path, rows), "messages")
    assert records[1] == {
        "messages": [
            user("Answer the biomedical question concisely.\n\nQuestion: What does TNF stand for?"),
            assistant("Tumour necrosis factor."),
        ]
    }
    assert convert("bioasq", "prompt_only", rows[0]) == {
        "prompt": [user("Answer the biomedical question concisely.\n\nQuestion: Is BRCA1 a tumour suppressor?")],
        "answer": "Yes, BRCA1 is a tumour suppressor gene.",
    }


def test_ultrafeedback_hub_rows(tmp_path):
    rows = [
        {
            "prompt": "Name a primary colour.",
            "prompt_id": "p1",
            "chosen": [user("Name a primary colour."), assistant("Red.")],
            "rejected": [user("Name a primary colour."), assistant("Green.")],
            "messages": [user("Name a primary colour."), assistant("Red.")],
            "score_chosen": 9.0,
            "score_rejected": 4.0,
        },
        {
            "prompt": "Say hi.",
            "prompt_id": "p2",
            "chosen": [user("Say hi."), assistant("Hi!")],
            "rejected": [user("Say hi."), assistant("Hi!")],
            "score_chosen": 5.0,
            "score_rejected": 5.0,
        },
    ]
    path = write_rows(tmp_path, rows)
    records, stats = load("ultrafeedback", path, "preference")
    assert records == [
        {"prompt": [user("Name a primary colour.")], "chosen": [assistant("Red.")], "rejected": [assistant("Green.")]}
    ]
    assert stats.skipped_bad_rows == 1 and "identical" in stats.bad_rows[0]
    records, _ = load("ultrafeedback", path, "prompt_only")
    assert records[0] == {"prompt": [user("Name a primary colour.")], "prompt_id": "p1"}


def test_webgpt_hub_rows_prefer_the_higher_score_and_refuse_ties(tmp_path):
    def row(score_0: float, score_1: float) -> dict[str, Any]:
        return {
            "question": {"dataset": "eli5", "id": "q", "full_text": "Why is the sky blue?"},
            "quotes_0": {"title": [], "extract": []},
            "answer_0": "Rayleigh scattering.",
            "tokens_0": [],
            "score_0": score_0,
            "quotes_1": {"title": [], "extract": []},
            "answer_1": "Because of the sea.",
            "tokens_1": [],
            "score_1": score_1,
        }

    records, stats = load("webgpt", write_rows(tmp_path, [row(1.0, -1.0), row(-0.5, 0.5), row(0.0, 0.0)]), "preference")
    question = [user("Why is the sky blue?")]
    assert records == [
        {
            "prompt": question,
            "chosen": [assistant("Rayleigh scattering.")],
            "rejected": [assistant("Because of the sea.")],
        },
        {
            "prompt": question,
            "chosen": [assistant("Because of the sea.")],
            "rejected": [assistant("Rayleigh scattering.")],
        },
    ]
    assert stats.skipped_bad_rows == 1 and "tie" in stats.bad_rows[0]


def test_kto_mix_hub_rows(tmp_path):
    rows = [
        {"prompt": [user("Capital of France?")], "completion": [assistant("Paris.")], "label": True},
        {"prompt": [user("Capital of France?")], "completion": [assistant("Lyon.")], "label": False},
    ]
    records, stats = load("kto_mix", write_rows(tmp_path, rows), "unpaired")
    assert stats.skipped_bad_rows == 0
    assert records == [
        {"prompt": [user("Capital of France?")], "completion": [assistant("Paris.")], "label": True},
        {"prompt": [user("Capital of France?")], "completion": [assistant("Lyon.")], "label": False},
    ]


# --------------------------------------------------------------------------------------- context clipping
def test_clip_cuts_at_a_word_boundary_within_the_limit():
    assert clip("short", 10) == "short"
    clipped = clip("alpha beta gamma delta epsilon", 20)
    assert len(clipped) <= 20 and clipped.endswith(CLIP_MARKER) and clipped.startswith("alpha beta")


def context_of(prompt: str, start: str, end: str) -> str:
    return prompt.split(start, 1)[1].split(end, 1)[0]


def test_long_evidence_is_clipped_on_the_passage_side_only():
    question = "Which musical premiered in 1993? " * 20  # a long question is never cut
    row = {
        "question": question,
        "entity_pages": {"title": ["Page"], "wiki_context": ["word " * 5000]},
        "search_results": {"title": ["Result"], "search_context": ["other " * 5000]},
        "answer": {"value": "Sunset Boulevard " * 10, "aliases": []},
    }
    for limit in (300, MAX_CONTEXT_CHARS):
        qa = triviaqa_module.parse(row, max_context_chars=limit)
        context = context_of(qa.prompt, "Evidence:\n", "\n\nQuestion: ")
        assert len(context) <= limit and context.endswith(CLIP_MARKER)
        assert qa.prompt.endswith(f"Question: {question.strip()}\n\nAnswer with a short phrase.")
        assert qa.completion == ("Sunset Boulevard " * 10).strip()
    # Through the registered converter the module's default budget applies.
    prompt = convert("triviaqa", "messages", row)["messages"][0]["content"]
    assert len(context_of(prompt, "Evidence:\n", "\n\nQuestion: ")) <= MAX_CONTEXT_CHARS


def test_long_transcript_is_clipped_and_hotpot_distractors_go_first():
    row = {"question": "What was said?", "answer": "Everything.", "transcript": "blah " * 4000}
    record = convert("earnings_calls", "messages", row)
    prompt = record["messages"][0]["content"]
    assert len(context_of(prompt, "transcript:\n", "\n\nQuestion: ")) <= MAX_CONTEXT_CHARS
    assert prompt.endswith("Question: What was said?\n\nAnswer from the transcript.")
    assert record["messages"][1]["content"] == "Everything."

    from llm_finetuning.data.datasets import hotpotqa

    long_row = {**HOTPOT_HUB, "context": {**HOTPOT_HUB["context"]}}
    long_row["context"]["sentences"] = [["distractor " * 100], *HOTPOT_HUB["context"]["sentences"][1:]]
    qa = hotpotqa.parse(long_row, max_context_chars=200)
    context = context_of(qa.prompt, "Passages:\n", "\n\nQuestion: ")
    assert "distractor" not in context and "# Scott Derrickson" in context and "# Ed Wood" in context
    assert len(context) <= 200 and qa.prompt.endswith(HOTPOT_TAIL)


# -------------------------------------------------------------------------------------------- test splits
def test_hub_test_split_is_refused_without_opt_in():
    with pytest.raises(ConfigError, match="allow_test_split"):
        load_records(DataSource(dataset="gsm8k", split="test"), "fail", SplitStats(), "messages")
    with pytest.raises(ConfigError, match="allow_test_split"):  # PopQA has only a test split on the hub
        load_records(DataSource(dataset="popqa"), "fail", SplitStats(), "prompt_only")
    with pytest.raises(ConfigError, match="test_prefs"):
        load_records(DataSource(dataset="ultrafeedback", split="test"), "fail", SplitStats(), "preference")


def test_local_copy_of_a_test_split_is_not_refused():
    records, stats = load("gsm8k", shared("gsm8k/test.jsonl"), "prompt_only", split="test", max_samples=3)
    assert len(records) == 3 and stats.skipped_bad_rows == 0
    assert records[0]["answer"] == "18"


# ------------------------------------------------------------------------------------------------ loss mask
def test_labels_cover_exactly_the_answer_of_a_real_gsm8k_example():
    (record,), _ = load("gsm8k", shared("gsm8k/train.jsonl"), "messages", max_samples=1)
    messages = record["messages"]
    assert messages[0]["content"] == GSM8K_PROMPT.format(NATALIA["question"])
    assert messages[1]["content"] == NATALIA["answer"]
    tokenizer = build_tokenizer()
    encoded = encode(tokenizer, messages)
    trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    assert trained == list(range(trained[0], trained[-1] + 1))  # one contiguous span
    assert [encoded.input_ids[i] for i in trained] == [encoded.labels[i] for i in trained]
    assert tokenizer.decode([encoded.input_ids[i] for i in trained]) == NATALIA["answer"] + tokenizer.eos_token
    prompt_ids = encoded.input_ids[: trained[0]]
    assert NATALIA["question"] in tokenizer.decode(prompt_ids)
