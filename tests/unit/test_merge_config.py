"""The merge config: per-tensor options, mergekit files as written on model cards, and the layer plan."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.export.merge_config import MergeConfig, load_merge_config, parse_size, setting_at
from llm_finetuning.export.merge_plan import build_plan

pytestmark = pytest.mark.unit
WriteYaml = Callable[..., Path]


def test_setting_numbers_gradients_and_filters() -> None:
    config = MergeConfig.model_validate(
        {
            "method": "slerp",
            "models": [{"path": "a"}, {"path": "b"}],
            "t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"filter": "mlp", "value": 0.2}, {"value": 0.7}],
        }
    )
    attention = "model.layers.3.self_attn.q_proj.weight"
    # Gradient [0, 0.5, 1] at position 0.75: index 1.5 -> halfway between 0.5 and 1.
    assert setting_at(config.t, attention, 0.75) == 0.75
    assert setting_at(config.t, "model.layers.0.mlp.up_proj.weight", 0.3) == 0.2
    assert setting_at(config.t, "lm_head.weight", 0.0) == 0.7
    assert setting_at([0.0, 1.0, 0.0, 1.0], "x", 0.5) == 0.5
    assert setting_at(2, "x", 0.5) == 2.0
    only_mlp = MergeConfig.model_validate(
        {"method": "slerp", "models": [{"path": "a"}, {"path": "b"}], "t": {"filter": "mlp", "value": 1}}
    )
    assert setting_at(only_mlp.t, "lm_head.weight", 0.0) is None  # no filter matches


def test_sizes() -> None:
    assert parse_size("500MB") == 500_000_000 and parse_size("2GiB") == 2 * 2**30 and parse_size(1024) == 1024
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("five gigs")


SLERP_CARD = """
slices:
  - sources:
      - model: OpenPipe/mistral-ft-optimized-1218
        layer_range: [0, 32]
      - model: mlabonne/NeuralHermes-2.5-Mistral-7B
        layer_range: [0, 32]
merge_method: slerp
base_model: mlabonne/NeuralHermes-2.5-Mistral-7B
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


def test_a_slerp_model_card_config(write_yaml: WriteYaml) -> None:
    config = load_merge_config(write_yaml(SLERP_CARD))
    assert config.method == "slerp" and config.dtype == "bfloat16" and config.base_model is None
    sources = config.slices[0].sources
    # mergekit's base is t = 0; llmft's t = 0 is the first source.
    assert [s.path for s in sources] == ["mlabonne/NeuralHermes-2.5-Mistral-7B", "OpenPipe/mistral-ft-optimized-1218"]
    assert sources[0].layer_range == (0, 32)
    assert setting_at(config.t, "model.layers.0.mlp.up_proj.weight", 0.0) == 1.0


TIES_CARD = """
models:
  - model: base
    # no parameters necessary for base model
  - model: one
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: two
    parameters:
      density: 0.5
      weight: 0.5
      t: 0.3
merge_method: ties
base_model: base
parameters:
  normalize: true
  int8_mask: true
  lambda: 0.8
dtype: float16
"""


def test_a_ties_model_card_config(write_yaml: WriteYaml, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = load_merge_config(write_yaml(TIES_CARD))
    assert config.method == "ties" and config.normalize is True and config.scale == 0.8
    assert config.base_model.endswith("base") or config.base_model == "base"
    # The base, listed among the models, is the base only (llmft lists it once).
    assert [m.weight for m in config.models] == [[0.0, 0.3, 0.7, 1.0], 0.5]
    assert "int8_mask" in caplog.text and "only stores an internal mask" in caplog.text
    # A parameter the method does not read is dropped with a warning, as mergekit ignores it.
    assert "models.2.parameters.t" in caplog.text and "ignored, as mergekit ignores it" in caplog.text


def test_mergekit_names_and_defaults(write_yaml: WriteYaml) -> None:
    nuslerp = load_merge_config(
        write_yaml(
            "merge_method: nuslerp\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n"
            "    parameters: {weight: 2}\nparameters: {nuslerp_flatten: false, nuslerp_row_wise: true}\n"
            "out_dtype: bfloat16\ndtype: float32\n"
        )
    )
    assert nuslerp.flatten is False and nuslerp.row_wise is True and nuslerp.dtype == "bfloat16"
    passthrough = load_merge_config(
        write_yaml(
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n"
            "        parameters:\n          scale: [{filter: o_proj, value: 0}]\nparameters: {scale: 0.5}\n"
        )
    )
    scale = passthrough.slices[0].sources[0].scale
    assert setting_at(scale, "model.layers.0.self_attn.o_proj.weight", 0) == 0.0
    assert setting_at(scale, "model.layers.0.mlp.up_proj.weight", 0) == 0.5  # the top-level default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: sce\nmodels: [{model: a}]\n", "`merge_method`: `sce` is not supported"),
        ("merge_method: tie\nmodels: [{model: a}]\n", "Did you mean `ties`?"),
        ("merge_method: linear\nmodels: [{model: a}]\nchat_template: chatml\n", "`chat_template`"),
        ("merge_method: linear\nmodules: {text: {}}\n", "`modules`: per-module merges"),
        (
            "merge_method: linear\nmodels: [{model: a}, {model: b}]\ntokenizer: {source: base, tokens: {x: {}}}\n",
            "`tokenizer.tokens`: added tokens",
        ),
        (
            "merge_method: passthrough\nslices:\n  - sources: [{model: a, layer_range: [0, 1]}]\n"
            "    parameters: {scale: 1}\n",
            "`slices.0.parameters`: per-slice settings",
        ),
        ("merge_method: slerp\nbase_model: c\nmodels: [{model: a}, {model: b}]\nparameters: {t: 0.5}\n", "t = 0"),
        ("merge_method: linear\nbase_model: c\nmodels: [{model: a}, {model: b}]\n", "one more input"),
        ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nparameters: {normalize: [1, 0]}\n", "true or"),
        ("merge_method: linear\nmodels: [{model: 'org/name@v2'}, {model: b}]\n", "revisions"),
        ("merge_method: linear\nmodels: [{model: a}, {model: b}]\ndtype: int8\n", "not a floating-point"),
    ],
)
def test_what_mergekit_files_cannot_ask(write_yaml: WriteYaml, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_merge_config(write_yaml(text))
    assert message in str(error.value)
    assert "config.yaml:" in str(error.value)  # the file and line of the key


def test_unknown_mergekit_keys_are_warnings(write_yaml: WriteYaml, caplog: pytest.LogCaptureFixture) -> None:
    config = load_merge_config(write_yaml("merge_method: linear\nmodels: [{model: a}, {model: b}]\nparamters: {}\n"))
    assert config.method == "linear"
    assert "`paramters`: not a mergekit key" in caplog.text and "Did you mean `parameters`?" in caplog.text
    caplog.clear()
    load_merge_config(
        write_yaml("merge_method: ties\nbase_model: c\nmodels: [{model: a, parameters: {densty: 0.5}}]\n")
    )
    assert "`models.0.parameters.densty`: not used by `merge_method: ties`" in caplog.text
    assert "Did you mean `density`?" in caplog.text


def test_native_config_errors_name_the_key(write_yaml: WriteYaml) -> None:
    path = write_yaml({"method": "ties", "base_model": "b", "models": [{"path": "a", "weight": "heavy"}]})
    with pytest.raises(ConfigError) as error:
        load_merge_config(path)
    assert "models.0.weight: expected a number" in str(error.value)
    with pytest.raises(ConfigError, match="no `method`"):
        load_merge_config(write_yaml({"methd": "ties"}))


def names(layers: int, extra: tuple[str, ...] = ()) -> list[str]:
    inner = [f"model.layers.{i}.{rest}" for i in range(layers) for rest in ("mlp.up_proj.weight", "input_norm")]
    return ["model.embed_tokens.weight", *inner, "model.norm.weight", "lm_head.weight", *extra]


def test_plan_of_a_frankenmerge() -> None:
    config = MergeConfig.model_validate(
        {
            "method": "passthrough",
            "slices": [
                {"sources": [{"path": "a", "layer_range": [0, 2]}]},
                {"sources": [{"path": "b", "layer_range": [1, 4]}]},
            ],
        }
    )
    plan = build_plan(config, {"a": names(3), "b": names(4)})
    jobs = {job.output: job for job in plan.jobs}
    assert len(plan.layer_sources) == 5
    assert jobs["model.embed_tokens.weight"].inputs[0][0].path == "a"  # embeddings from the first slice
    assert jobs["lm_head.weight"].inputs[0][0].path == "b"  # the head and final norm from the last
    layer4 = jobs["model.layers.4.mlp.up_proj.weight"]
    assert layer4.inputs[0][1] == "model.layers.3.mlp.up_proj.weight" and layer4.position == 1.0
    assert jobs["model.layers.2.input_norm"].position == 0.0  # first layer of the second slice


def test_plan_order_is_by_input_names_as_in_mergekit() -> None:
    """mergekit runs a tensor's merge when its inputs' names come up in sorted order; the random draws of DARE
    and DELLA follow that order, so the plan keeps it."""
    config = MergeConfig.model_validate(
        {
            "method": "passthrough",
            "slices": [
                {"sources": [{"path": "a", "layer_range": [2, 3]}]},
                {"sources": [{"path": "b", "layer_range": [0, 1]}]},
            ],
        }
    )
    order = [job.output for job in build_plan(config, {"a": names(3), "b": names(3)}).jobs]
    # Output layer 1 reads layer 0 of b, output layer 0 reads layer 2 of a.
    assert order.index("model.layers.1.input_norm") < order.index("model.layers.0.input_norm")


def test_plan_of_a_models_merge_adds_the_base() -> None:
    config = MergeConfig.model_validate(
        {"method": "ties", "base_model": "base", "models": [{"path": "a"}, {"path": "b"}]}
    )
    plan = build_plan(config, {p: names(2) for p in ("a", "b", "base")})
    assert {m.path for m, _ in plan.jobs[0].inputs} == {"a", "b", "base"}
    assert all(job.output == job.inputs[0][1] for job in plan.jobs)


def test_layer_range_outside_the_model() -> None:
    config = MergeConfig.model_validate(
        {"method": "passthrough", "slices": [{"sources": [{"path": "a", "layer_range": [0, 5]}]}]}
    )
    with pytest.raises(UserError, match="outside its 3 layers"):
        build_plan(config, {"a": names(3)})
