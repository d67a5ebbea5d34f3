"""`llmft data generate` against a scripted teacher on 127.0.0.1: exact rows, provenance, every drop counted,
cleaning on by default, token counts and cost equal to what the endpoint reported, and bad input stopped before
any request."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.data.formats import to_record
from llm_finetuning.errors import ConfigError, DataError, UserError
from llm_finetuning.synth import generate_data, load_generate_config
from llm_finetuning.synth.evol import rewrite_problem
from llm_finetuning.synth.self_instruct import parse_instructions
from llm_finetuning.synth.templates import BUILTIN, template_id
from tests.synth_fixtures import ScriptedTeacher


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def config_file(tmp_path: Path, config: dict, name: str = "gen.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def last(messages: list[dict]) -> str:
    return messages[-1]["content"]


# ------------------------------------------------------------------------------------------ self-instruct
SEEDS = [
    {"instruction": "Give three tips for staying healthy."},
    {"instruction": "Translate 'good morning' into French."},
    {"instruction": "Summarize the plot of Hamlet in two sentences."},
]
BATCHES = [
    "1. Write a haiku about autumn leaves falling.\n2. Describe the picture attached below.\n"
    "3. Write a haiku about autumn leaves falling down.\n4. List three prime numbers greater than ten.\n5. Hi",
    "1. Give three tips for staying healthy.\n2. Explain why the sky looks blue at noon,\n   in simple words.",
]


def self_instruct_policy(messages: list[dict], count: int) -> str:
    text = last(messages)
    if "new task instructions" in text:
        batch = self_instruct_policy.calls  # type: ignore[attr-defined]
        self_instruct_policy.calls += 1  # type: ignore[attr-defined]
        return BATCHES[min(batch, len(BATCHES) - 1)]
    return f"Answer to: {text}"


def test_parse_instructions_numbered_bulleted_continued_and_plain() -> None:
    assert parse_instructions("1. First one\n  goes on\n2) Second\n- Third") == ["First one goes on", "Second", "Third"]
    assert parse_instructions("Just a line\n\nAnother line") == ["Just a line", "Another line"]


def test_self_instruct_keeps_new_instructions_drops_each_kind_and_counts_tokens(tmp_path: Path) -> None:
    self_instruct_policy.calls = 0  # type: ignore[attr-defined]
    write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    with ScriptedTeacher(self_instruct_policy) as teacher:
        path = config_file(
            tmp_path,
            {
                "teacher": teacher.teacher(),
                "task": {"name": "self_instruct", "seed_tasks": "seeds.jsonl", "num_instructions": 3},
                "output": "out/self.jsonl",
                "pricing": {"input_per_million": 2.0, "output_per_million": 10.0},
            },
        )
        result = generate_data(load_generate_config(path))
        prompt_tokens, completion_tokens = teacher.prompt_tokens, teacher.completion_tokens
    rows = read_jsonl(tmp_path / "out/self.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == [
        "Write a haiku about autumn leaves falling.",
        "List three prime numbers greater than ten.",
        "Explain why the sky looks blue at noon, in simple words.",
    ]
    assert all(r["messages"][1]["content"] == "Answer to: " + r["messages"][0]["content"] for r in rows)
    provenance = rows[0]["provenance"]
    assert provenance["teacher"] == "scripted" and provenance["task"] == "self_instruct"
    assert provenance["template"] == template_id("self_instruct", BUILTIN["self_instruct"])
    assert set(provenance["seed"]) <= {f"{tmp_path / 'seeds.jsonl'}:{n}" for n in (1, 2, 3)}
    assert provenance["request"] == 0 and rows[2]["provenance"]["request"] == 1
    report = result.report
    # Batch 1: a picture, a near-copy of the haiku, "Hi"; batch 2: a seed asked again.
    assert report["dropped"] == {"length": 1, "not_text": 1, "too_similar": 2}
    assert report["instructions_kept"] == 3 and report["rows"] == 3 and report["written"] == {"rows": 3}
    assert report["tokens"] == {"prompt": prompt_tokens, "completion": completion_tokens}
    assert report["cost"] == pytest.approx((2.0 * prompt_tokens + 10.0 * completion_tokens) / 1e6)
    assert report["requests"]["teacher"]["calls"] == 2 + 3
    for row in rows:
        assert to_record(row, "messages", {})["messages"] == row["messages"]  # trains as `format: messages`
    assert json.loads(Path(result.report_path).read_text())["rows"] == 3


# ------------------------------------------------------------------------------------------ evol-instruct
def evol_policy(messages: list[dict], count: int) -> str:
    text = last(messages)
    if text.startswith("Act as a prompt"):
        prompt = text.split("Prompt:\n", 1)[1]
        if "COPY" in prompt:
            return prompt
        if "LEAK" in prompt:
            return "Rewritten Prompt: " + prompt
        if "REFUSE" in prompt:
            return "I'm sorry, I cannot rewrite that."
        return prompt + " (harder)"
    if "(harder) (harder)" in text and "SULK" in text:
        return "I'm sorry, I can't answer that."
    return f"Answer: {text}"


def test_evol_instruct_rewrites_rounds_eliminates_failures_and_records_operations(tmp_path: Path) -> None:
    prompts = ["Name a fruit.", "COPY this prompt.", "A LEAK prompt.", "REFUSE me.", "SULK about it."]
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    with ScriptedTeacher(evol_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {"name": "evol_instruct", "prompts": "p.jsonl", "rounds": 2, "operations": ["constraints"]},
            "output": "evol.jsonl",
        }
        result = generate_data(load_generate_config(config_file(tmp_path, config)))
    rows = read_jsonl(tmp_path / "evol.jsonl")
    assert [r["messages"] for r in rows] == [
        [
            {"role": "user", "content": "Name a fruit. (harder) (harder)"},
            {"role": "assistant", "content": "Answer: Name a fruit. (harder) (harder)"},
        ]
    ]
    assert rows[0]["provenance"]["operations"] == ["constraints", "constraints"]
    assert rows[0]["provenance"]["original"] == "Name a fruit."
    assert result.report["dropped"] == {
        "answer_refusal": 1,
        "rewrite_copy": 1,
        "rewrite_leak": 1,
        "rewrite_refusal": 1,
    }


def test_rewrite_problem_reasons() -> None:
    assert rewrite_problem("a b", None) == "failed"
    assert rewrite_problem("a b", "  ") == "empty"
    assert rewrite_problem("Name a fruit.", "name a FRUIT") == "copy"
    assert rewrite_problem("x", "#Rewritten Prompt#: do y") == "leak"
    assert rewrite_problem("x", "Name two fruits and their colours.") is None


def test_evol_operations_are_drawn_per_prompt_reproducibly(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i} about cats."} for i in range(6)])

    def run(output: str) -> list[list[str]]:
        with ScriptedTeacher(evol_policy) as teacher:
            config = {
                "teacher": teacher.teacher(),
                "task": {"name": "evol_instruct", "prompts": "p.jsonl", "rounds": 3},
                "output": output,
                "clean": {"enabled": False},
            }
            generate_data(load_generate_config(config_file(tmp_path, config)))
        return [r["provenance"]["operations"] for r in read_jsonl(tmp_path / output)]

    first = run("a.jsonl")
    assert first == run("b.jsonl")
    assert len({op for ops in first for op in ops}) > 1  # the five operations are drawn from, not one


# ------------------------------------------------------------------------------------------ distillation
def distill_policy(messages: list[dict], count: int) -> str:
    text = last(messages)
    if "capital of France" in text:
        return ["Lyon", "Paris", "paris", "Marseille"][count % 4]
    return ["Berlin", "Rome"][count % 2]  # never right for the second prompt


def test_distill_rejection_sampling_keeps_best_accepted_and_writes_pairs(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question": "What is the capital of France?", "answer": "Paris"},
            {"question": "What is the capital of Spain?", "answer": "Madrid"},
        ],
    )
    with ScriptedTeacher(distill_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {
                "name": "distill",
                "prompts": "q.jsonl",
                "samples": 4,
                "score": {"reward": "exact_match"},
                "min_score": 1.0,
                "preference_output": "pairs.jsonl",
            },
            "output": "distilled.jsonl",
        }
        result = generate_data(load_generate_config(config_file(tmp_path, config)))
        assert len(teacher.requests) == 8
    rows = read_jsonl(tmp_path / "distilled.jsonl")
    assert [r["messages"][-1]["content"] for r in rows] == ["Paris"]  # the earliest of the two correct samples
    assert rows[0]["provenance"]["scores"] == [0.0, 1.0, 1.0, 0.0] and rows[0]["provenance"]["sample"] == 1
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("Paris", "Marseille")]
    assert to_record(pairs[0], "preference", {})["chosen"][0]["content"] == "Paris"
    report = result.report
    assert report["dropped"] == {"below_min_score": 6, "no_sample_accepted": 1}
    assert report["samples"] == 8 and report["accepted"] == 2 and report["acceptance_rate"] == 0.25


def test_distill_keep_all_and_cleaning_removes_duplicate_answers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is the capital of France?", "answer": "Paris"}])
    with ScriptedTeacher(distill_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {
                "name": "distill",
                "prompts": "q.jsonl",
                "samples": 4,
                "score": {"reward": "exact_match"},
                "min_score": 1.0,
                "keep": "all",
            },  # fmt: skip
            "output": "all.jsonl",
        }
        result = generate_data(load_generate_config(config_file(tmp_path, config)))
    # "Paris" and "paris" are both right; exact dedup (case-folded) keeps the first.
    assert [r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "all.jsonl")] == ["Paris"]
    assert result.report["clean"]["rows"]["in"] == 2 and result.report["clean"]["rows"]["out"] == 1
    clean_report = json.loads(Path(result.report["clean"]["rows"]["report"]).read_text())
    assert any("exact duplicate" in e["reason"] for e in clean_report["events"])


def test_distill_with_a_judge_rubric_scores_with_the_teacher_at_temperature_zero(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is the capital of France?"}])
    temperatures = []

    def policy(messages: list[dict], count: int) -> str:
        if "Candidate answer" in last(messages):
            return '{"score": 5}' if "Candidate answer:\nParis" in last(messages) else '{"score": 1}'
        return distill_policy(messages, count)

    with ScriptedTeacher(policy) as teacher:
        config = {
            "teacher": teacher.teacher(temperature=0.9),
            "task": {"name": "distill", "prompts": "q.jsonl", "samples": 2, "score": {"rubric": "answer_relevancy"}},
            "output": "judged.jsonl",
        }
        result = generate_data(load_generate_config(config_file(tmp_path, config)))
        temperatures = [len(teacher.requests)]
    rows = read_jsonl(tmp_path / "judged.jsonl")
    assert rows[0]["messages"][-1]["content"] == "Paris" and rows[0]["provenance"]["scores"] == [0.0, 1.0]
    assert result.report["requests"]["judge"]["calls"] == 2 and temperatures == [4]


def test_distill_reward_without_its_reference_column_stops_before_any_request(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 2 + 2?"}])
    with ScriptedTeacher(distill_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {"name": "distill", "prompts": "q.jsonl", "score": {"reward": "answer_correctness"}},
            "output": "x.jsonl",
        }
        with pytest.raises(ConfigError, match=r"q.jsonl:1: the score needs a reference column \(answer\)"):
            generate_data(load_generate_config(config_file(tmp_path, config)))
        assert teacher.requests == []


# ------------------------------------------------------------------------------------------ multi-turn
def multi_turn_policy(messages: list[dict], count: int) -> str:
    text = last(messages)
    if text.startswith("Below is a conversation"):
        turns = text.count("ASSISTANT:")
        return f"Follow-up {turns}?"
    return f"Reply {sum(m['role'] == 'assistant' for m in messages) + 1}"


def test_multi_turn_alternates_roles_for_the_asked_turns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Tell me about owls."}])
    with ScriptedTeacher(multi_turn_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {"name": "multi_turn", "prompts": "p.jsonl", "turns": 3, "system": "Be brief."},
            "output": "chat.jsonl",
        }
        generate_data(load_generate_config(config_file(tmp_path, config)))
        user_sim = [m for m in teacher.requests if last(m).startswith("Below is a conversation")]
    (row,) = read_jsonl(tmp_path / "chat.jsonl")
    assert [(m["role"], m["content"]) for m in row["messages"]] == [
        ("system", "Be brief."),
        ("user", "Tell me about owls."),
        ("assistant", "Reply 1"),
        ("user", "Follow-up 1?"),
        ("assistant", "Reply 2"),
        ("user", "Follow-up 2?"),
        ("assistant", "Reply 3"),
    ]
    assert row["provenance"]["turns"] == 3
    assert "SYSTEM" not in last(user_sim[0]) and "USER: Tell me about owls." in last(user_sim[0])
    assert to_record(row, "messages", {})["messages"] == row["messages"]


# ------------------------------------------------------------------------------------------ constitutional
def cai_policy(messages: list[dict], count: int) -> str:
    text = last(messages)
    if "Point out every way" in text or text.startswith("CRITIQUE"):
        return "The reply explains how to pick a lock, which could help a burglar."
    if text.startswith("Rewrite your last reply") or text.startswith("REVISE"):
        return "I can't help with breaking into a home, but a locksmith can let you into your own."
    if "weather" in messages[0]["content"]:
        return "It is sunny."
    return "Insert a tension wrench and rake the pins."


def test_constitutional_answer_critique_revise_into_sft_rows_and_pairs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "How do I get into my neighbour's house?"}])
    (tmp_path / "constitution.yaml").write_text(
        yaml.safe_dump({"principles": [{"name": "harm", "critique": "CRITIQUE it.", "revision": "REVISE it."}]})
    )
    with ScriptedTeacher(cai_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {"name": "constitutional", "prompts": "p.jsonl", "constitution": "constitution.yaml"},
            "output": "cai.jsonl",
        }
        result = generate_data(load_generate_config(config_file(tmp_path, config)))
        revision_request = teacher.requests[-1]
    (sft,) = read_jsonl(tmp_path / "cai.jsonl")
    (pair,) = read_jsonl(tmp_path / "cai.preference.jsonl")
    revised = "I can't help with breaking into a home, but a locksmith can let you into your own."
    assert sft["messages"][-1] == {"role": "assistant", "content": revised}
    assert pair["chosen"][0]["content"] == revised
    assert pair["rejected"][0]["content"] == "Insert a tension wrench and rake the pins."
    assert sft["provenance"]["principles"] == ["harm"]
    # The revision is asked in the same conversation: prompt, answer, critique request, critique, revision request.
    assert [m["role"] for m in revision_request] == ["user", "assistant", "user", "assistant", "user"]
    assert revision_request[2]["content"] == "CRITIQUE it." and revision_request[4]["content"] == "REVISE it."
    assert result.outputs["preference"] == str(tmp_path / "cai.preference.jsonl")
    assert result.report["pairs"] == 1


def test_constitutional_builtin_constitution_and_unchanged_revisions_give_no_pair(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What's the weather like?"}])

    def same(messages: list[dict], count: int) -> str:
        return "It is sunny." if len(messages) in (1, 5) else "No problems found."

    with ScriptedTeacher(same) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {"name": "constitutional", "prompts": "p.jsonl", "revisions": 2},
            "output": "cai.jsonl",
        }
        result = generate_data(load_generate_config(config_file(tmp_path, config)))
    assert len(read_jsonl(tmp_path / "cai.jsonl")) == 1
    assert result.report["dropped"] == {"unchanged_pair": 1} and result.report["pairs"] == 0
    assert Path(tmp_path / "cai.preference.jsonl").read_text() == ""


def test_bad_constitution_is_refused_before_any_request(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi there"}])
    (tmp_path / "c.yaml").write_text("principles:\n  - {name: x, critique: ''}\n")
    with ScriptedTeacher(cai_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {"name": "constitutional", "prompts": "p.jsonl", "constitution": "c.yaml"},
            "output": "cai.jsonl",
        }
        with pytest.raises(ConfigError, match=r"principles\[0\]\.critique must be a non-empty text"):
            generate_data(load_generate_config(config_file(tmp_path, config)))
        assert teacher.requests == []


# ------------------------------------------------------------------------------------------ run and CLI
def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("teacher: {model: t}\ntask:\n  name: distill\n  prompts: p.jsonl\n  sample: 3\noutput: o.jsonl\n")
    with pytest.raises(ConfigError) as caught:
        load_generate_config(path)
    assert re.search(r"g\.yaml:5: task\.sample: unknown key\. Did you mean `samples`\?", str(caught.value))


def test_bad_prompt_row_and_existing_output_stop_before_any_request(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"text": "no prompt here"}])
    (tmp_path / "exists.jsonl").write_text("keep me\n")
    with ScriptedTeacher(distill_policy) as teacher:
        config = {"teacher": teacher.teacher(), "task": {"name": "distill", "prompts": "p.jsonl"}}
        with pytest.raises(DataError, match=r"p\.jsonl:2: no prompt"):
            generate_data(load_generate_config(config_file(tmp_path, {**config, "output": "o.jsonl"})))
        with pytest.raises(UserError, match="exists; set `overwrite: true`"):
            generate_data(load_generate_config(config_file(tmp_path, {**config, "output": "exists.jsonl"})))
        assert teacher.requests == []
    assert (tmp_path / "exists.jsonl").read_text() == "keep me\n"


def test_failed_requests_are_counted_and_an_empty_result_writes_nothing(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello there"}])
    config = {
        "teacher": {
            "base_url": "http://127.0.0.1:9/v1",
            "model": "down",
            "api_key_env": None,
            "cache": False,
            "max_retries": 0,
        },  # fmt: skip
        "task": {"name": "distill", "prompts": "p.jsonl", "samples": 2},
        "output": "o.jsonl",
    }
    with pytest.raises(DataError, match="no rows were kept"):
        generate_data(load_generate_config(config_file(tmp_path, config)))
    assert not (tmp_path / "o.jsonl").exists()
    report = json.loads((tmp_path / "o.jsonl.report.json").read_text())
    assert report["failed_requests"] == 2 and report["dropped"] == {"no_sample": 1}


def test_rerun_is_answered_by_the_cache(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is the capital of France?"}])
    with ScriptedTeacher(distill_policy) as teacher:
        config = {
            "teacher": teacher.teacher(cache=str(tmp_path / "cache")),
            "task": {"name": "distill", "prompts": "p.jsonl", "samples": 3},
            "output": "o.jsonl",
            "overwrite": True,
        }
        path = config_file(tmp_path, config)
        first = generate_data(load_generate_config(path)).report
        second = generate_data(load_generate_config(path)).report
        assert len(teacher.requests) == 3
    assert first["requests"]["teacher"]["calls"] == 3 and second["requests"]["teacher"]["cache_hits"] == 3
    assert second["tokens"] == {"prompt": 0, "completion": 0} and second["cost"] == 0.0


def test_cli_generate_prints_counts_and_decontaminates_against_eval_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Tell me about owls."}, {"prompt": "Tell me about cats."}])
    write_jsonl(tmp_path / "eval.jsonl", [{"question": "Tell me about cats.", "answer": "Reply 1"}])
    with ScriptedTeacher(multi_turn_policy) as teacher:
        config = {
            "teacher": teacher.teacher(),
            "task": {"name": "multi_turn", "prompts": "p.jsonl", "turns": 1},
            "output": "o.jsonl",
            "clean": {"against": ["eval.jsonl"], "decontaminate": {"ngram": 4}},
        }
        result = CliRunner().invoke(app, ["data", "generate", str(config_file(tmp_path, config))])
    assert result.exit_code == 0, result.output
    assert "multi_turn: 2 rows generated from 2 inputs; written after cleaning:" in result.output
    assert "o.jsonl (1 rows)" in result.output
    assert [r["messages"][0]["content"] for r in read_jsonl(tmp_path / "o.jsonl")] == ["Tell me about owls."]
    again = CliRunner().invoke(app, ["data", "generate", str(tmp_path / "gen.yaml")])
    assert again.exit_code == 2 and "exists" in again.output and "Traceback" not in again.output
    templates = CliRunner().invoke(app, ["data", "generate", "--templates"])
    assert "evol_rewrite" in templates.output and "${prompt}" in templates.output
