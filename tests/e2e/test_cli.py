"""The `llmft` command line: version, schema, validation, resolved configs, env, and run-directory safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning import __version__
from llm_finetuning.cli.main import app

pytestmark = pytest.mark.e2e

# Wide enough that rich tables and help text do not fold keys or descriptions.
WIDE = {"COLUMNS": "250"}
GOOD = {"data": {"train": {"path": "data.jsonl", "format": "prompt_completion"}}}


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, list(args), env={**WIDE, **(env or {})})

    return invoke


def lines_starting_with(text: str, prefixes: tuple[str, ...]) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(prefixes)]


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"llm-finetuning {__version__}"


def test_config_schema_lists_keys_with_descriptions(cli):
    result = cli("config", "schema")
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if "training.learning_rate" in line]
    assert len(rows) == 1
    assert "Peak learning rate" in rows[0]
    assert "0.0002" in rows[0]  # the default
    for key in ("model.name", "adapter.r", "data.train[].path", "method.train_on_prompt", "output_dir"):
        assert key in result.stdout


def test_config_schema_section_shows_only_that_section(cli):
    result = cli("config", "schema", "adapter")
    assert result.exit_code == 0
    keys = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")]
    keys = [k for k in keys if k]  # continuation lines of folded descriptions have an empty key cell
    assert "adapter.r" in keys and "adapter.target_modules" in keys
    assert all(k == "adapter" or k.startswith("adapter.") for k in keys), keys
    assert "training.learning_rate" not in result.stdout
    assert "Rank of the low-rank update" in result.stdout


def test_config_schema_keeps_bracketed_text_in_descriptions(cli):
    result = cli("config", "schema", "adapter")
    assert "[lm_head]" in result.stdout
    assert "[q_proj, v_proj]" in result.stdout


def test_train_help_lists_config_keys_with_descriptions(cli):
    result = cli("train", "--help")
    assert result.exit_code == 0
    assert "--overwrite" in result.stdout and "--resume" in result.stdout
    assert lines_starting_with(result.stdout, ("training.learning_rate:",)) == [
        "training.learning_rate: Peak learning rate."
    ]
    (lora_rank,) = lines_starting_with(result.stdout, ("adapter.r ",))
    assert "adapter.method: lora | dora" in lora_rank and "Rank of the low-rank update" in lora_rank
    assert lines_starting_with(result.stdout, ("model.allow_unsafe_weights:",))


def test_config_validate_accepts_a_good_file(cli, write_yaml):
    path = write_yaml(GOOD)
    result = cli("config", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok {path}"


def test_config_validate_rejects_a_misspelled_key_with_a_suggestion(cli, write_yaml):
    path = write_yaml({**GOOD, "training": {"learnig_rate": 1e-4}})
    result = cli("config", "validate", str(path))
    assert result.exit_code == 2
    assert "ok" not in result.stdout
    assert "error:" in result.stderr
    assert "training.learnig_rate: unknown key. Did you mean `learning_rate`?" in result.stderr
    assert "Traceback" not in result.output


def test_config_validate_rejects_a_bad_override(cli, write_yaml):
    result = cli("config", "validate", str(write_yaml(GOOD)), "training.learning_rate=-1")
    assert result.exit_code == 2
    assert "training.learning_rate" in result.stderr
    assert "greater than 0" in result.stderr


def test_config_show_prints_resolved_yaml_with_overrides(cli, write_yaml, tmp_path):
    path = write_yaml(GOOD, "my-run.yaml")
    result = cli("config", "show", str(path), "training.learning_rate=1e-4")
    assert result.exit_code == 0, result.output
    assert "  learning_rate: 0.0001\n" in result.stdout
    resolved = yaml.safe_load(result.stdout)
    assert resolved["training"]["learning_rate"] == pytest.approx(1e-4)
    assert resolved["training"]["epochs"] == 1.0  # defaults are filled in
    assert resolved["adapter"]["method"] == "lora"
    assert resolved["data"]["train"][0]["path"] == str(tmp_path / "data.jsonl")
    assert resolved["output_dir"] == str(Path("runs") / "my-run")


def test_config_show_output_is_faithful_yaml_in_a_narrow_terminal(cli, write_yaml, tmp_path):
    long_dir = "d" * 120
    data = {"train": {"path": f"{long_dir}/data.jsonl", "system_prompt": "Answer [yes] or [no]."}}
    result = cli("config", "show", str(write_yaml({"data": data})), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["data"]["train"][0]["system_prompt"] == "Answer [yes] or [no]."
    assert resolved["data"]["train"][0]["path"] == str(tmp_path / long_dir / "data.jsonl")


def test_env_json_is_machine_readable(cli):
    import torch

    result = cli("env", "--json", env={"COLUMNS": "40"})  # narrow: JSON must not be wrapped
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert set(info) == {"versions", "device", "extras", "fast_path"}
    assert info["fast_path"]["capabilities"]["device"] == info["device"]["device"]
    assert info["fast_path"]["sft_defaults"]["LM head"].startswith("plain" if info["device"]["device"] == "cpu" else "")
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["llm-finetuning"] == __version__
    assert info["device"]["device"] in ("cpu", "cuda", "mps")
    assert info["device"]["cuda_available"] == torch.cuda.is_available()
    assert info["extras"]["tensorboard"]["installed"] is True
    assert info["extras"]["tensorboard"]["version"]


@pytest.fixture
def existing_run(tmp_path, write_yaml):
    """A config whose output_dir is an existing run directory, and a snapshot of that directory's files."""
    run = tmp_path / "runs" / "existing"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "completed"}))
    (run / "marker.txt").write_text("keep me")
    config = write_yaml({**GOOD, "output_dir": str(run)})

    def snapshot() -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(run.iterdir())}

    before = snapshot()
    return config, snapshot, before


def test_train_refuses_an_existing_run_dir_without_overwrite(cli, existing_run):
    config, snapshot, before = existing_run
    result = cli("train", str(config))
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr
    assert "already exists" in result.stderr
    assert "--overwrite" in result.stderr
    assert "Traceback" not in result.output
    assert snapshot() == before


def test_train_rejects_overwrite_with_resume(cli, existing_run):
    config, snapshot, before = existing_run
    result = cli("train", str(config), "--overwrite", "--resume")
    assert result.exit_code == 2, result.output
    assert "--overwrite and --resume cannot be used together" in result.stderr
    assert snapshot() == before


def test_user_mistake_in_a_real_process_exits_2_without_traceback(write_yaml):
    path = write_yaml({**GOOD, "trainig": {"epochs": 1}})
    result = subprocess.run(
        [sys.executable, "-m", "llm_finetuning.cli.main", "config", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error:")
    assert "Did you mean `training`?" in result.stderr
    assert "Traceback" not in result.stderr
