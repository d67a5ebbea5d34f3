"""The config schema, `extends:`, overrides, and the messages for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from trl import SFTConfig

from llm_finetuning.config import load_config
from llm_finetuning.config.describe import describe
from llm_finetuning.config.schema import Config, FullAdapter, LoraAdapter
from llm_finetuning.errors import ConfigError
from llm_finetuning.methods.common import apply_extra

pytestmark = pytest.mark.unit

MINIMAL = "data:\n  train: {path: d.jsonl, format: alpaca}\n"


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_minimal_config_gets_defaults_and_a_run_dir_named_after_the_file(write_yaml, tmp_path):
    config = load_config(write_yaml(MINIMAL, "my-run.yaml"))
    assert config.method.name == "sft"
    assert isinstance(config.adapter, LoraAdapter)
    assert config.output_dir == str(Path("runs") / "my-run")
    # Data paths are relative to the YAML file, not the working directory.
    assert config.data.train[0].path == str(tmp_path / "d.jsonl")


def test_unknown_key_names_path_line_and_closest_key(write_yaml):
    path = write_yaml(MINIMAL + "training:\n  epochs: 2\n  learnig_rate: 1.0e-4\n")
    message = error_of(path)
    assert f"{path}:5: training.learnig_rate: unknown key. Did you mean `learning_rate`?" in message


def test_unknown_top_level_section_suggests_section(write_yaml):
    message = error_of(write_yaml(MINIMAL + "trainig: {epochs: 1}\n"))
    assert "trainig: unknown key. Did you mean `training`?" in message


def test_key_of_another_adapter_says_which(write_yaml):
    message = error_of(write_yaml(MINIMAL + "adapter: {method: full, r: 8}\n"))
    assert "adapter.r" in message
    assert "is an option of `adapter.method: lora`, not of `full`" in message


def test_unknown_method_option_is_an_error_naming_method_key(write_yaml):
    message = error_of(write_yaml(MINIMAL + "method: {name: sft, num_generations: 4}\n"))
    assert "method.num_generations: unknown key" in message
    assert "method.sft" not in message  # the union's tag is not part of the user's key path


def test_bad_tag_lists_choices_and_suggests(write_yaml):
    message = error_of(write_yaml(MINIMAL), ["adapter.method=lorra"])
    assert "command line `adapter.method=lorra`: adapter.method: unknown value `lorra`" in message
    assert "Did you mean `lora`?" in message


def test_wrong_type_names_key_and_value(write_yaml):
    path = write_yaml(MINIMAL + "training:\n  per_device_batch_size: lots\n")
    message = error_of(path)
    assert f"{path}:4: training.per_device_batch_size:" in message
    assert "'lots'" in message


def test_constraint_violation_names_constraint(write_yaml):
    message = error_of(write_yaml(MINIMAL + "training: {learning_rate: -1}\n"))
    assert "training.learning_rate: input should be greater than 0" in message


def test_conflicting_options_name_both(write_yaml):
    message = error_of(write_yaml(MINIMAL + "training: {warmup_ratio: 0.1, warmup_steps: 10}\n"))
    assert "`training.warmup_ratio` and `training.warmup_steps` cannot both be set" in message


def test_a_bare_yaml_no_turns_mixed_precision_off(write_yaml):
    config = load_config(write_yaml(MINIMAL + "training: {mixed_precision: no}\n"), ["training.mixed_precision=no"])
    assert config.training.mixed_precision == "no"


def test_prefix_tuning_with_gradient_checkpointing_is_refused(write_yaml):
    text = MINIMAL + "adapter: {method: prefix}\ntraining: {gradient_checkpointing: true}\n"
    assert "`adapter.method: prefix` cannot be used with `training.gradient_checkpointing: true`" in error_of(
        write_yaml(text)
    )


def test_tiny_shape_with_a_hub_model_is_a_conflict(write_yaml):
    message = error_of(write_yaml(MINIMAL + "model: {name: org/model, tiny: {hidden_size: 8}}\n"))
    assert "`model.tiny` only applies when `model.name` is `tiny`" in message


def test_missing_required_section(write_yaml):
    assert "data: required key is missing" in error_of(write_yaml("model: {name: tiny}\n"))


def test_every_problem_is_reported_at_once(write_yaml):
    message = error_of(write_yaml(MINIMAL + "training: {epochs: 0, optimzer: sgd}\n"))
    assert message.startswith("Invalid config (2 problems)")


def test_duplicate_key_in_one_mapping_is_an_error(write_yaml):
    path = write_yaml(MINIMAL + "training:\n  epochs: 1\n  epochs: 2\n")
    assert f"{path}:5: `training.epochs` is set twice" in error_of(path)


def test_invalid_yaml_names_line(write_yaml):
    path = write_yaml("data:\n  train: [unclosed\n")
    assert f"{path}:" in error_of(path) and "not valid YAML" in error_of(path)


def test_extends_merges_and_child_wins(write_yaml, tmp_path):
    write_yaml(
        "model: {name: tiny, dtype: float32}\ntraining: {learning_rate: 1.0e-3, epochs: 3}\n"
        "data: {train: {path: base.jsonl}}\n",
        "base/parent.yaml",
    )
    child = write_yaml("extends: base/parent.yaml\ntraining: {epochs: 1}\n", "child.yaml")
    config = load_config(child)
    assert config.training.learning_rate == 1e-3  # inherited
    assert config.training.epochs == 1  # overridden
    assert config.model.dtype == "float32"
    # A path written in the parent stays relative to the parent's folder.
    assert config.data.train[0].path == str(tmp_path / "base" / "base.jsonl")


def test_extends_missing_file_names_file_and_line(write_yaml):
    child = write_yaml(MINIMAL + "extends: nowhere.yaml\n")
    message = error_of(child)
    assert f"{child}:3: `extends: nowhere.yaml` not found" in message


def test_extends_cycle_is_reported(write_yaml):
    write_yaml("extends: b.yaml\n" + MINIMAL, "a.yaml")
    write_yaml("extends: a.yaml\n", "b.yaml")
    assert "cycle" in error_of(write_yaml("extends: a.yaml\n", "c.yaml"))


def test_error_in_parent_points_at_parent_file(write_yaml):
    parent = write_yaml(MINIMAL + "training: {epoch: 3}\n", "parent.yaml")
    child = write_yaml("extends: parent.yaml\n", "child.yaml")
    assert f"{parent}:3: training.epoch: unknown key. Did you mean `epochs`?" in error_of(child)


def test_overrides_coerce_types(write_yaml):
    config = load_config(
        write_yaml(MINIMAL),
        [
            "training.learning_rate=1e-4",
            "training.max_steps=7",
            "training.gradient_checkpointing=true",
            "adapter.target_modules=[q_proj, v_proj]",
            "data.train.0.max_samples=3",
        ],
    )
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.training.max_steps == 7
    assert config.training.gradient_checkpointing is True
    assert config.adapter.target_modules == ["q_proj", "v_proj"]
    assert config.data.train[0].max_samples == 3


def test_override_switches_method_variant(write_yaml):
    config = load_config(write_yaml(MINIMAL + "adapter: {method: lora, r: 4}\n"), ["adapter=full"])
    assert isinstance(config.adapter, FullAdapter)


def test_malformed_override(write_yaml):
    assert "not of the form" in error_of(write_yaml(MINIMAL), ["training.learning_rate"])


def test_missing_config_file(tmp_path):
    assert "Config file not found" in error_of(tmp_path / "nope.yaml")


def test_training_extra_is_checked_against_trainer_config():
    with pytest.raises(ConfigError, match="not an option of SFTConfig. Did you mean `neftune_noise_alpha`"):
        apply_extra({}, {"neftune_noise_alph": 5}, SFTConfig)
    with pytest.raises(ConfigError, match="set by the config schema"):
        apply_extra({}, {"learning_rate": 1.0}, SFTConfig)
    assert apply_extra({}, {"neftune_noise_alpha": 5.0}, SFTConfig) == {"neftune_noise_alpha": 5.0}


def test_every_field_has_a_description():
    rows = describe(Config)
    assert len(rows) > 40
    missing = [row.key for row in rows if not row.description.strip()]
    assert missing == []


def test_resolved_config_round_trips(write_yaml, tmp_path):
    import yaml

    config = load_config(write_yaml(MINIMAL), ["training.seed=3"])
    again = write_yaml(yaml.safe_dump(config.model_dump(mode="json")), "resolved.yaml")
    assert load_config(again) == config


def test_missing_tracker_package_is_a_config_error(monkeypatch):
    from llm_finetuning.methods import common

    monkeypatch.setattr(common, "is_installed", lambda name: name != "wandb")
    with pytest.raises(ConfigError, match=r"tracking.report_to: wandb not installed.*llm-finetuning\[wandb\]"):
        common.check_trackers(["tensorboard", "wandb"])
    common.check_trackers(["tensorboard"])
