"""Every data-generation and stages recipe runs: its teacher pointed at a scripted endpoint on 127.0.0.1 that
answers each kind of request in kind, its training stages shrunk to one step of a tiny model. Everything else is
the recipe's own: seed files, task settings, cleaning, the chain, the red-team gate of the constitutional DPO."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.recipes import all_recipes
from llm_finetuning.recipes.catalog import merged
from llm_finetuning.stages import run_stages
from llm_finetuning.synth import generate_data, load_generate_config
from tests.synth_fixtures import ScriptedTeacher

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::UserWarning")]

GENERATE = all_recipes("generate")
STAGES = all_recipes("stages")
TINY = {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}}
TOPICS = itertools.count()
SEEDS = Path(all_recipes("generate")[0].path).parent / "_seeds"
MATH_ANSWERS = {
    row["question"]: row["answer"] for row in map(json.loads, (SEEDS / "math_prompts.jsonl").read_text().splitlines())
}


def policy(messages: list[dict], count: int) -> str:
    """A plausible reply to every kind of request the tasks send."""
    text = messages[-1]["content"]
    if "new task instructions" in text:
        n = next(TOPICS)
        return "\n".join(f"{i}. Describe topic number {n * 10 + i} with {i} distinct examples." for i in range(1, 6))
    if text.startswith("Act as a prompt"):
        return text.split("Prompt:\n", 1)[1] + " Answer in exactly three numbered steps."
    if text.startswith("Below is a conversation"):
        return f"Could you tell me more about point {text.count('ASSISTANT:')}?"
    if "Candidate answer" in text:
        return '{"score": 5}' if "(0)" in text else '{"score": 2}'  # the first sample is the best
    if text.startswith(("Point out", "Identify", "Does your", "If your", "Could your", "Is anything")):
        return "The reply could cause harm and should decline the unsafe part."
    if text.startswith("Rewrite your last reply"):
        return f"I cannot help with that part, but here is a safe alternative to: {messages[0]['content']}"
    if text in MATH_ANSWERS:  # a word problem: right on every other sample
        return f"Working it out step by step. #### {MATH_ANSWERS[text] if count % 2 else -1}"
    return f"Here is a careful answer ({count}) to: {text[:80]}"


@pytest.fixture(scope="module")
def teacher():
    with ScriptedTeacher(policy) as endpoint:
        yield endpoint


def read(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("recipe", GENERATE, ids=lambda r: r.name)
def test_generation_recipe_runs(recipe, teacher, tmp_path):
    config = load_generate_config(recipe.name)
    assert config.output.startswith(str(Path.cwd() / "runs" / "data_generation"))  # not inside the package
    updates = {"teacher": config.teacher.model_copy(update={"base_url": teacher.base_url, "api_key_env": None,
                                                            "cache": False})}  # fmt: skip
    updates["output"] = str(tmp_path / "rows.jsonl")
    if getattr(config.task, "preference_output", None):
        updates["task"] = config.task.model_copy(update={"preference_output": str(tmp_path / "pairs.jsonl")})
    if config.task.name == "self_instruct":
        updates["task"] = config.task.model_copy(update={"num_instructions": 6})
    result = generate_data(config.model_copy(update=updates))
    rows = read(result.outputs["rows"])
    assert rows and all(r["provenance"]["task"] == config.task.name for r in rows)
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    if "preference" in result.outputs:
        assert read(result.outputs["preference"])
    assert result.report["tokens"]["completion"] > 0


def shrink(recipe, teacher_url: str, out: Path) -> dict:
    data = merged(recipe)  # seed files and bases as absolute paths
    data["output_dir"] = str(out)
    for stage in data["stages"]:
        if "generate" in stage:
            stage["generate"]["teacher"] = {**stage["generate"].get("teacher", {}), "base_url": teacher_url,
                                            "api_key_env": None, "cache": False}  # fmt: skip
            continue
        config = stage["config"]
        config["model"] = dict(TINY)
        config["training"] = {**config.get("training", {}), "max_steps": 1, "per_device_batch_size": 2,
                              "gradient_accumulation_steps": 1, "logging_steps": 1}  # fmt: skip
        config.setdefault("data", {})["max_length"] = 256
    return data


@pytest.mark.parametrize("recipe", STAGES, ids=lambda r: r.name)
def test_stages_recipe_runs(recipe, teacher, tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(shrink(recipe, teacher.base_url, tmp_path / "out")))
    results = run_stages(path)
    assert all(r.status == "completed" for r in results), [(r.name, r.status) for r in results]
    generated = results[0].outputs
    assert read(generated["rows"]) and read(generated["preference"])
    for result in results[1:]:
        manifest = json.loads((Path(result.run_dir) / "manifest.json").read_text())
        assert manifest["status"] == "completed" and manifest["data"]["stats"]["train"]["examples"] > 0


def test_copied_workflow_recipes_still_find_their_seed_files(tmp_path):
    """A copy of a generation or stages recipe elsewhere validates: its seed files and bases are absolute."""
    from llm_finetuning.stages import is_stages_file, stage_names

    assert is_stages_file("data_generation/constitutional")  # `llmft train NAME` runs the chain
    for name in ("data_generation/constitutional", "data_generation/distill_math"):
        result = CliRunner().invoke(app, ["recipes", "copy", name, str(tmp_path / f"{name.rsplit('/', 1)[-1]}.yaml")])
        assert result.exit_code == 0, result.output
    assert stage_names(tmp_path / "constitutional.yaml") == ["data (generate)", "sft", "dpo"]
    copied = load_generate_config(tmp_path / "distill_math.yaml")
    assert Path(copied.task.prompts).is_file() and copied.task.score.reward == "answer_correctness"
