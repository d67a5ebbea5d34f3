"""Every shipped recipe runs: its model swapped for a tiny one, its data for the real files in ../shared/data or
hub-layout fixture rows, its judge for a loopback stub; one step, then the run directory is checked.

Everything else is the recipe's own: adapter (QLoRA quantizes the tiny model for real), method options, rewards,
learning rate, schedule, eval data. Only the sizes a byte-level tiny model cannot share with the real tokenizer
(prompt lengths for GRPO) and the batch sizes are scaled down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config import Config, load_config
from llm_finetuning.recipes import all_recipes
from llm_finetuning.rewards.registry import registry as reward_registry
from llm_finetuning.train import train
from tests.conftest import SHARED_DATA
from tests.fixtures_hub import dataset_file
from tests.unit.judge_stub import Stub

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TINY = "{architecture: llama, hidden_size: 64, num_layers: 1, num_heads: 4, num_kv_heads: 2}"  # 64: 4-bit blocks
TINY_ENCODER = "{architecture: bert, hidden_size: 32, num_layers: 1, num_heads: 4}"
ENCODER_METHODS = ("embedding", "reranker", "classify", "multi_head")
RECIPES = all_recipes()
TRAIN_ROWS, EVAL_ROWS = 8, 2
# PEFT's name for each adapter method, as written in final/adapter_config.json.
PEFT_TYPE = {"lora": "LORA", "dora": "LORA", "prefix": "PREFIX_TUNING", "p_tuning": "P_TUNING"}


@pytest.fixture(scope="module", autouse=True)
def _shared_data() -> None:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not found (set LLMFT_SHARED_DATA)")


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of hub-layout fixture files for the whole module (written on first use)."""
    return tmp_path_factory.mktemp("hub_rows")


@pytest.fixture(scope="module")
def judge() -> Any:
    with Stub() as stub:
        yield stub


@pytest.fixture(scope="module")
def reward_runs(tmp_path_factory: pytest.TempPathFactory, rows_dir: Path) -> dict[str, Path]:
    """The reward-model recipes, each smoke-run once: the PPO recipes train against them."""
    runs = {}
    for dataset in ("ultrafeedback", "webgpt"):
        name = f"preference_alignment/reward/{dataset}"
        run_dir = tmp_path_factory.mktemp("reward") / "run"
        train(load_config(name, smoke_overrides(load_config(name), rows_dir, run_dir)))
        runs[dataset] = run_dir
    return runs


def smoke_overrides(config: Config, rows_dir: Path, run_dir: Path, judge_url: str | None = None) -> list[str]:
    """Overrides that shrink a recipe to one step of a tiny model on local data, keeping everything else."""
    lm_head = config.method.name == "multi_head" and any(h.type == "lm" for h in config.method.heads)
    encoder = config.method.name in ENCODER_METHODS and not lm_head  # an LM head needs a decoder
    overrides = [
        "model.name=tiny",
        f"model.tiny={TINY_ENCODER if encoder else TINY}",
        *(["model.dtype=auto"] if encoder else []),
        f"output_dir={run_dir}",
        "training.max_steps=1",
        "training.logging_steps=1",
        "training.per_device_batch_size=2",
        "training.gradient_accumulation_steps=1",
    ]
    for split in ("train", "eval"):
        for index, source in enumerate(getattr(config.data, split)):
            path = dataset_file(source.dataset, rows_dir, source.split or "train")
            rows = TRAIN_ROWS if split == "train" else EVAL_ROWS
            overrides += [f"data.{split}.{index}.path={path}", f"data.{split}.{index}.max_samples={rows}"]
    if config.data.eval_split:
        overrides.append("data.eval_split=0.25")  # 2 of the 8 rows
    method = config.method.name
    if method == "grpo":
        # Byte-level tokens: prompts are ~4x longer than with the real tokenizer.
        overrides += ["method.num_generations=2", "method.max_completion_length=8"]
        overrides += ["method.max_prompt_length=4096", "data.max_length=4096"]
        if config.method.judge is not None:
            overrides += [f"method.judge.base_url={judge_url}", "method.judge.api_key_env=null"]
            overrides += ["method.judge.cache=false", "method.judge.max_retries=0"]
    if getattr(config.method, "matryoshka_dims", None):
        overrides.append("method.matryoshka_dims=[16, 8]")  # within the tiny encoder's 32 dimensions
    if method == "ppo":
        overrides += ["method.mini_batch_size=2", "method.max_new_tokens=8", "method.ppo_epochs=1"]
    return overrides


def check_run(run_dir: Path, config: Config) -> list[dict[str, Any]]:
    """The run directory of a completed run; returns its metrics lines."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["data"]["stats"]["train"]["examples"] > 0
    final = run_dir / "final"
    assert (final / "tokenizer_config.json").is_file() and (final / "llmft_config.yaml").is_file()
    if config.method.name in ENCODER_METHODS:
        assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()  # LoRA merged
        if config.method.name in ("embedding", "reranker"):
            assert (final / "modules.json").is_file()  # sentence-transformers' layout
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["peft_type"] == PEFT_TYPE[config.adapter.method]
    assert adapter.get("use_dora", False) == (config.adapter.method == "dora")
    assert any(final.glob("adapter_model.safetensors"))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines, "metrics.jsonl is empty"
    return lines


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_recipe_smoke_runs(recipe, tmp_path, rows_dir, judge, reward_runs):
    config = load_config(recipe.name)
    method = config.method.name
    if method == "reward":
        run_dir = reward_runs[recipe.name.rsplit("/", 1)[-1]]  # already run for the PPO recipes
    else:
        run_dir = tmp_path / "run"
        overrides = smoke_overrides(config, rows_dir, run_dir, judge.base_url)
        if method == "ppo":
            overrides.append(f"method.reward_model={reward_runs[recipe.name.rsplit('/', 1)[-1]]}")
        requests_before = judge.requests
        smoke = load_config(recipe.name, overrides)
        assert smoke.training.learning_rate == config.training.learning_rate  # the recipe's own optimisation
        assert train(smoke).status == "completed"
    lines = check_run(run_dir, config)
    logged = {key for line in lines for key in line}
    if method == "grpo":
        for entry in config.method.rewards:
            assert f"rewards/{entry.name}/mean" in logged, (entry.name, sorted(logged))
        judged = [e.name for e in config.method.rewards if reward_registry()[e.name].kind == "judge"]
        assert (judge.requests > requests_before) == bool(judged)
    elif method == "ppo":
        assert "reward" in logged or any(key.startswith("reward") for key in logged), sorted(logged)
    else:
        assert "loss" in logged or "train_loss" in logged, sorted(logged)
    if config.data.eval or config.data.eval_split:
        assert any(key.startswith("eval_") for key in logged), sorted(logged)


def test_llmft_train_runs_a_recipe_by_name(tmp_path, rows_dir):
    name = "supervised_finetuning/lora/arc"
    overrides = smoke_overrides(load_config(name), rows_dir, tmp_path / "run")
    result = CliRunner().invoke(app, ["train", name, *overrides])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    check_run(tmp_path / "run", load_config(name))
