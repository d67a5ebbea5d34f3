"""Shipped recipes: the collection is all there, every recipe validates and keeps its stated corrections, and
`llmft recipes list/show/copy`, by-name loading and overrides on a named recipe work."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning.check.config_checks import check_learning_rate
from llm_finetuning.check.data_checks import method_kind
from llm_finetuning.check.report import CheckReport
from llm_finetuning.cli.main import app
from llm_finetuning.config import load_config
from llm_finetuning.data.datasets import registry as dataset_registry
from llm_finetuning.errors import ConfigError
from llm_finetuning.recipes import all_recipes, find_recipe, get_recipe
from llm_finetuning.recipes.catalog import closest_names, recipes_root
from llm_finetuning.rewards.registry import registry as reward_registry

pytestmark = pytest.mark.unit

SFT_METHODS = ("lora", "qlora", "dora", "p_tuning", "prefix_tuning")
SFT_DATASETS = ("arc", "triviaqa", "factscore", "popqa", "earnings_call")
COLLECTION = [
    *(f"supervised_finetuning/{m}/{d}" for m in SFT_METHODS for d in SFT_DATASETS),
    "math_reasoning/sft/openr1_math",
    "math_reasoning/grpo/gsm8k",
    *(f"multi_hop_question_answering/grpo/{d}" for d in ("hotpotqa", "freshqa", "musique")),
    *(f"medical_question_answering/grpo/{d}" for d in ("medqa", "bioasq", "pubmedqa")),
    "preference_alignment/dpo/ultrafeedback",
    "preference_alignment/dpo/webgpt",
    "preference_alignment/orpo/ultrafeedback",
    "preference_alignment/kto/kto_mix",
    "preference_alignment/ppo/ultrafeedback",
    "preference_alignment/ppo/webgpt",
]
PARADIGMS = (
    "supervised_finetuning",
    "math_reasoning",
    "multi_hop_question_answering",
    "medical_question_answering",
    "preference_alignment",
    "retrieval_and_classification",
)
ENCODER_METHODS = ("embedding", "reranker", "classify", "multi_head")
RECIPES = all_recipes()
NAMES = [r.name for r in RECIPES]
# Adapter method a recipe folder stands for.
SFT_ADAPTER = {
    "lora": "lora",
    "qlora": "lora",
    "dora": "dora",
    "p_tuning": "p_tuning",
    "prefix_tuning": "prefix",
    "dp_lora": "lora",
    "tool_calling": "lora",
}
# Record kind each method trains on (what a named dataset must be able to give).
METHOD_KIND = {"sft": "messages", "grpo": "prompt_only", "ppo": "prompt_only", "kto": "unpaired"}


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args), env={"COLUMNS": "250"})


# --------------------------------------------------------------------------------------------------- catalog
def test_the_collection_and_a_cpu_recipe_per_paradigm_are_shipped():
    assert len(COLLECTION) == 39
    assert set(COLLECTION) <= set(NAMES), sorted(set(COLLECTION) - set(NAMES))
    for paradigm in PARADIGMS:
        assert any(name.startswith(f"{paradigm}/cpu/") for name in NAMES), paradigm
    # PPO trains against a reward model: its recipe ships too.
    assert {"preference_alignment/reward/ultrafeedback", "preference_alignment/reward/webgpt"} <= set(NAMES)
    # Shared bases (`_` files and folders) are not recipes.
    assert not any(part.startswith("_") for name in NAMES for part in name.split("/"))
    assert (recipes_root() / "_base" / "sft.yaml").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_validates_and_is_self_consistent(name):
    recipe = get_recipe(name)
    config = load_config(name)
    assert config.output_dir == f"runs/{name}"
    assert config == load_config(recipe.path)
    # A description that says what is trained: at least a sentence naming the model family.
    family = config.model.name if config.method.name in ENCODER_METHODS else "Qwen2.5"
    assert len(recipe.description) > 120 and family in recipe.description
    # Every named dataset exists and gives the records the method trains on.
    datasets = dataset_registry()
    for source in [*config.data.train, *config.data.eval]:
        kind = (
            method_kind(config, source)
            if config.method.name in ENCODER_METHODS
            else METHOD_KIND.get(config.method.name, "preference")
        )
        assert source.dataset in datasets, source.dataset
        assert kind in datasets[source.dataset].converters, (source.dataset, kind)
    # The learning rate is in the usual range of its method and adapter (the collection's were not).
    report = CheckReport()
    check_learning_rate(config, report)
    assert report.findings == [], report.findings


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("supervised_finetuning/")])
def test_sft_recipes_train_their_adapter_on_the_answer_only(name):
    config = load_config(name)
    folder = name.split("/")[1]
    assert config.method.name == "sft" and config.method.train_on_prompt is False
    if folder != "cpu":
        assert config.adapter.method == SFT_ADAPTER[folder]
        assert config.model.quantization == ("nf4" if folder == "qlora" else "none")
    assert "answer" in get_recipe(name).description.lower()


def test_prompt_learning_rates_are_far_above_the_lora_rate():
    lora = load_config("supervised_finetuning/lora/arc").training.learning_rate
    for dataset in SFT_DATASETS:
        assert load_config(f"supervised_finetuning/p_tuning/{dataset}").training.learning_rate >= 5 * lora
        assert load_config(f"supervised_finetuning/prefix_tuning/{dataset}").training.learning_rate >= 50 * lora
        # The prefix cannot use gradient checkpointing (the checkpointed forward drops it): never turned on.
        assert load_config(f"supervised_finetuning/prefix_tuning/{dataset}").training.gradient_checkpointing is False


def test_kto_learning_rate_moves_a_lora():
    config = load_config("preference_alignment/kto/kto_mix")
    # 10x the full-weights KTO rate of TRL's example (5e-7), which leaves a LoRA near zero.
    assert config.adapter.method == "lora" and config.training.learning_rate >= 5e-6
    assert "5e-7" in get_recipe("preference_alignment/kto/kto_mix").description


@pytest.mark.parametrize("name", [n for n in NAMES if load_config(n).method.name == "grpo"])
def test_grpo_recipes_reward_correctness_above_all_format_rewards(name):
    config = load_config(name)
    specs = reward_registry()
    weighted = []
    for entry in config.method.rewards:
        spec = specs[entry.name]
        weight = spec.default_weight if entry.weight is None else entry.weight
        weighted.append((spec.kind, weight * spec.max_value))
    correctness = [value for kind, value in weighted if kind == "correctness"]
    format_total = sum(value for kind, value in weighted if kind == "format")
    # A correct bare answer outscores a wrong one with every format reward at its maximum.
    assert correctness and correctness[0] > format_total, weighted
    judged = any(kind == "judge" for kind, _ in weighted)
    assert (config.method.judge is not None) == judged
    if judged:
        assert "judge" in get_recipe(name).description.lower() and config.method.judge.budget
    # The system prompt asks for the layout the format rewards check.
    prompt = config.data.train[0].system_prompt
    assert "<reasoning>" in prompt and "<answer>" in prompt


def test_ppo_recipes_read_the_reward_model_their_reward_recipe_writes():
    for dataset in ("ultrafeedback", "webgpt"):
        ppo = load_config(f"preference_alignment/ppo/{dataset}")
        reward = load_config(f"preference_alignment/reward/{dataset}")
        assert reward.method.name == "reward" and ppo.method.reward_model == reward.output_dir
        assert ppo.model.name == reward.model.name  # same chat template on both sides


@pytest.mark.parametrize("name", [n for n in NAMES if "/cpu/" in n])
def test_cpu_recipes_are_laptop_sized(name):
    config = load_config(name)
    small = "Qwen/Qwen2.5-0.5B-Instruct" if config.method.name not in ENCODER_METHODS else "MiniLM"
    assert small in config.model.name and config.model.dtype == "float32"
    assert config.model.quantization == "none" and config.training.mixed_precision == "no"
    assert config.training.max_steps is not None and config.training.max_steps <= 50
    assert all(source.max_samples and source.max_samples <= 200 for source in config.data.train)
    assert getattr(config.method, "judge", None) is None


# ----------------------------------------------------------------------------------------------- by name
def test_a_recipe_loads_by_name_with_or_without_folder_and_suffix():
    path = find_recipe("supervised_finetuning/lora/arc").path
    expected = load_config(path)
    assert load_config("supervised_finetuning/lora/arc") == expected
    assert load_config("recipes/supervised_finetuning/lora/arc.yaml") == expected


def test_overrides_apply_to_a_named_recipe():
    config = load_config("supervised_finetuning/lora/arc", ["training.learning_rate=1e-4", "adapter.r=8"])
    assert config.training.learning_rate == 1e-4 and config.adapter.r == 8
    assert config.data.train[0].dataset == "arc"  # the rest is the recipe's
    with pytest.raises(ConfigError, match=r"command line `training\.learning_rate=-1`"):
        load_config("supervised_finetuning/lora/arc", ["training.learning_rate=-1"])


def test_a_local_file_wins_over_a_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "supervised_finetuning" / "lora" / "arc"
    local.parent.mkdir(parents=True)
    local.write_text(yaml.safe_dump({"data": {"train": {"path": "x.jsonl", "format": "alpaca"}}}))
    assert load_config("supervised_finetuning/lora/arc").model.name == "tiny"


def test_an_unknown_name_suggests_the_closest_recipes():
    with pytest.raises(ConfigError) as error:
        load_config("supervised_finetuning/lora/arcc")
    message = str(error.value)
    assert "Config file not found: supervised_finetuning/lora/arcc" in message
    assert "`supervised_finetuning/lora/arc`" in message and "llmft recipes list" in message
    assert closest_names("qlora/triviaqa")[0] == "supervised_finetuning/qlora/triviaqa"
    assert "supervised_finetuning/dora/popqa" in closest_names("popqa")


def test_train_resolves_a_recipe_name_and_its_overrides(cli):
    # A bad override stops `llmft train` before any download: proof the name resolved and overrides reached it.
    result = cli("train", "supervised_finetuning/lora/arc", "training.learning_rate=-1")
    assert result.exit_code == 2
    assert "training.learning_rate" in result.output and "command line" in result.output
    result = cli("train", "supervised_finetuning/lora/arcc")
    assert result.exit_code == 2 and "Did you mean `supervised_finetuning/lora/arc`" in result.output


# ---------------------------------------------------------------------------------------------------- CLI
def test_list_shows_every_recipe_with_its_method_and_model(cli):
    result = cli("recipes", "list")
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert name in result.output
    row = next(line for line in result.output.splitlines() if "supervised_finetuning/qlora/arc " in line)
    assert "sft" in row and "lora (nf4)" in row and "Qwen/Qwen2.5-1.5B-Instruct" in row
    only_math = cli("recipes", "list", "math_reasoning")
    assert "math_reasoning/grpo/gsm8k" in only_math.output and "supervised_finetuning" not in only_math.output
    assert cli("recipes", "list", "nothing_like_this").exit_code == 1


def test_show_prints_a_self_contained_yaml_with_the_description(cli):
    result = cli("recipes", "show", "supervised_finetuning/prefix_tuning/arc")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert "extends" not in data
    assert data["adapter"] == {"method": "prefix", "num_virtual_tokens": 20}
    assert data["model"]["name"] == "Qwen/Qwen2.5-1.5B-Instruct" and data["training"]["learning_rate"] == 1e-2
    assert result.output.startswith("# Prefix tuning")
    assert list(data)[:3] == ["model", "adapter", "data"]
    missing = cli("recipes", "show", "math_reasoning/grpo/gsm")
    assert missing.exit_code == 2 and "`math_reasoning/grpo/gsm8k`" in missing.output


def test_copy_writes_a_file_that_loads_as_the_recipe(cli, tmp_path):
    target = tmp_path / "mine.yaml"
    result = cli("recipes", "copy", "medical_question_answering/grpo/medqa", str(target))
    assert result.exit_code == 0, result.output
    assert load_config(target) == load_config("medical_question_answering/grpo/medqa")
    assert target.read_text().startswith("# GRPO on MedQA")
    again = cli("recipes", "copy", "medical_question_answering/grpo/medqa", str(target))
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert cli("recipes", "copy", "preference_alignment/kto/kto_mix", str(target), "--overwrite").exit_code == 0
    assert load_config(target).method.name == "kto"
    folder = tmp_path / "configs"
    folder.mkdir()
    assert cli("recipes", "copy", "supervised_finetuning/dora/popqa", str(folder)).exit_code == 0
    assert load_config(folder / "popqa.yaml") == load_config("supervised_finetuning/dora/popqa")
