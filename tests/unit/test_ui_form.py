"""The new-run form: generated from the schema, and the config it stands for is what `llmft train` would read."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from llm_finetuning.config import load_config
from llm_finetuning.config.describe import describe
from llm_finetuning.errors import ConfigError
from llm_finetuning.recipes.catalog import all_recipes, merged
from llm_finetuning.ui import form


@pytest.fixture(scope="module")
def fields() -> list[form.Field]:
    return form.fields()


def by_key(fields: list[form.Field]) -> dict[str, form.Field]:
    return {f.key: f for f in fields}


def test_every_schema_key_is_a_field_with_its_description(fields):
    shown = by_key(fields)
    leaves = [r for r in describe() if not form.model_classes(form._plain(r.annotation)[0])]
    assert leaves
    lists = [f.key for f in fields if f.kind == "yaml" and "[" not in f.key]
    for row in leaves:
        key = row.key.replace("[]", "[0]")
        within = next((k for k in lists if row.key.startswith(f"{k}[].")), None)
        if within is not None:  # an entry of a list such as method.rewards: that list is one YAML field
            assert shown[within].kind == "yaml"
            continue
        assert key in shown, f"{row.key} has no field"
        same = [f for f in fields if f.key == key and f.description == row.description]
        assert same, f"{key}: the description differs from `llmft config schema`"
    # Choices are the schema's Literal values, and a tagged union gets the field that picks its variant.
    assert shown["model.dtype"].choices == tuple(typing.get_args(_annotation("model.dtype")))
    assert shown["adapter.method"].is_tag and {"lora", "dora", "full", "ia3"} <= set(shown["adapter.method"].choices)
    assert shown["method.name"].is_tag and {"sft", "dpo", "grpo", "kto", "ppo"} <= set(shown["method.name"].choices)
    assert shown["adapter.r"].when == ("adapter.method", ("lora", "dora"))
    assert shown["training.learning_rate"].kind == "float" and shown["adapter.r"].kind == "int"
    assert shown["method.rewards"].kind == "yaml" and shown["data.train[0].path"].kind == "text"


def _annotation(key: str):
    row = next(r for r in describe() if r.key == key)
    return form._plain(row.annotation)[0]


def test_a_new_schema_key_appears_in_the_form_without_ui_code(monkeypatch):
    from llm_finetuning.config import describe as describe_module
    from llm_finetuning.config.describe import KeyInfo

    rows = describe_module.describe()
    extra = KeyInfo("training.new_knob", "int", "3", "A knob added to the schema.", "", int, 3)
    monkeypatch.setattr(form, "describe", lambda: [*rows, extra])
    added = by_key(form.fields())["training.new_knob"]
    assert (added.kind, added.default, added.description) == ("int", 3, "A knob added to the schema.")


def test_only_what_differs_from_the_defaults_is_written(fields):
    defaults = form.defaults(fields)
    values = defaults | {"data.train[0].path": "train.jsonl", "adapter.r@lora|dora": 8.0, "training.max_steps": 5}
    assert form.config_data(values, fields) == {
        "adapter": {"method": "lora", "r": 8},  # the tag goes with its variant's options
        "data": {"train": [{"path": "train.jsonl"}]},
        "training": {"max_steps": 5},
    }
    assert form.config_data(defaults, fields) == {}


def test_options_of_another_variant_are_not_sent(fields):
    values = form.defaults(fields) | {"adapter.method": "ia3", "adapter.r@lora|dora": 64}
    assert form.config_data(values, fields)["adapter"] == {"method": "ia3"}
    assert not form.active(by_key(fields)["adapter.r"], values, form.tag_fields(fields))


def test_values_that_are_not_of_their_type_are_errors_at_their_field(fields):
    with pytest.raises(form.FormError) as error:
        form.config_data({"training.learning_rate": "fast"}, fields)
    assert error.value.key == "training.learning_rate" and "number" in error.value.message
    data, found = form.problems({"adapter.target_modules@lora|dora": "[q_proj, "}, fields)
    assert data == {} and found[0][0] == "adapter.target_modules" and "YAML" in found[0][1]


def test_problems_are_the_ones_llmft_train_reports(fields, tmp_path: Path):
    values = form.defaults(fields) | {
        "data.train[0].path": "train.jsonl",
        "model.quantization": "nf4",
        "adapter.method": "ia3",
    }
    data, found = form.problems(values, fields)
    assert [key for key, _ in found] == ["model.quantization"]
    # The same message `llmft train` prints for the same config written to a file.
    path = tmp_path / "run.yaml"
    path.write_text(form.to_yaml(data))
    with pytest.raises(ConfigError) as cli:
        load_config(path)
    assert found[0][1] in str(cli.value)
    # A missing section is shown at its first field.
    _, missing = form.problems({"model.name": "tiny"}, fields)
    assert missing == [("data", "required key is missing.")]
    assert form.field_for("data", fields).key.startswith("data.")


def test_no_problems_for_a_config_train_accepts(fields):
    values = form.defaults(fields) | {"data.train[0].path": "train.jsonl"}
    assert form.problems(values, fields)[1] == []


def representable(recipe) -> bool:
    data = merged(recipe)
    train = data.get("data", {}).get("train")
    return not (isinstance(train, list) and len(train) > 1) and not isinstance(data.get("data", {}).get("eval"), list)


def test_every_recipe_round_trips_through_the_form(fields):
    """A recipe picked in the form and sent back unchanged is the config `llmft train` reads from the recipe."""
    checked = 0
    for recipe in all_recipes():
        if not representable(recipe):
            continue
        values = form.defaults(fields) | form.values_from_config(merged(recipe), fields)
        data = form.config_data(values, fields)
        assert form.check(data) == [], recipe.name
        rebuilt = form.Config.model_validate({"output_dir": "x", **data}).model_dump(mode="json")
        original = load_config(recipe.path).model_dump(mode="json")
        rebuilt.pop("output_dir"), original.pop("output_dir")
        assert rebuilt == original, recipe.name
        checked += 1
    assert checked >= 30


def test_yaml_is_plain_and_loads_back(fields):
    data = form.config_data({"model.name": "tiny", "data.train[0].path": "a b.jsonl"}, fields)
    assert yaml.safe_load(form.to_yaml(data)) == data
