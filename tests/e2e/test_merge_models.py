"""`llmft merge-models` on tiny saved models: the result loads with plain transformers and is the right model."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from llm_finetuning.cli.merge_models_cmd import merge_models_cmd
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.export.merge_config import MergeConfig, load_merge_config
from llm_finetuning.export.merge_models import merge_models
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.e2e

app = typer.Typer()
app.command()(merge_models_cmd)
INPUT_IDS = torch.tensor([[5, 17, 42, 99, 3, 250]])


def save_tiny(directory: Path, seed: int, hidden_size: int = 16, **save_kwargs: object) -> Path:
    tokenizer = build_tokenizer()
    shape = TinyModelConfig(hidden_size=hidden_size, num_layers=1, num_heads=2, seed=seed)
    build_model(shape, tokenizer).save_pretrained(directory, **save_kwargs)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: save_tiny(root / name, seed) for seed, name in enumerate(["base", "a", "b"])}


def logits(directory: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(INPUT_IDS).logits


def run_cli(write_yaml: Callable[..., Path], config: dict[str, object], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(write_yaml(config)), *args])
    return result.exit_code, result.output


def test_linear_merge_of_identical_models_is_the_model(
    models: dict[str, Path], write_yaml: Callable[..., Path], tmp_path: Path
) -> None:
    # Paths relative to the YAML file (tmp_path) must resolve.
    shutil.copytree(models["a"], tmp_path / "copy")
    config = {
        "method": "linear",
        "models": [{"path": str(models["a"]), "weight": 1.0}, {"path": "copy", "weight": 3.0}],
        "output_dir": "merged",
    }
    code, output = run_cli(write_yaml, config)
    assert code == 0, output
    merged = tmp_path / "merged"
    assert "Merged model saved to" in output
    expected, got = load_file(models["a"] / "model.safetensors"), load_file(merged / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor)
    torch.testing.assert_close(logits(merged), logits(models["a"]))
    assert AutoTokenizer.from_pretrained(merged).get_vocab() == build_tokenizer().get_vocab()
    assert load_merge_config(merged / "merge_config.yaml").method == "linear"


def test_slerp_at_zero_is_the_first_model(models: dict[str, Path], tmp_path: Path) -> None:
    config = MergeConfig(
        method="slerp",
        models=[{"path": str(models["a"])}, {"path": str(models["b"])}],
        t=0.0,
        output_dir=str(tmp_path / "slerp"),
    )
    output = merge_models(config)
    torch.testing.assert_close(logits(output), logits(models["a"]))
    assert not torch.allclose(logits(output), logits(models["b"]))


TASK_VECTOR_OPTIONS = {
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "dare_linear": {"density": 0.5},
    "breadcrumbs": {"density": 0.5, "gamma": 0.1},
    "breadcrumbs_ties": {"density": 0.5},
    "della": {"density": 0.5, "epsilon": 0.1},
    "della_linear": {"density": 0.5},
    "model_stock": {},
}


@pytest.mark.parametrize("method", sorted(TASK_VECTOR_OPTIONS))
def test_methods_with_a_base_load_and_are_reproducible(models: dict[str, Path], tmp_path: Path, method: str) -> None:
    outputs = []
    for name in ("one", "two"):
        config = MergeConfig(
            method=method,
            base_model=str(models["base"]),
            models=[{"path": str(models["a"])}, {"path": str(models["b"])}],
            seed=3,
            dtype="bfloat16",
            output_dir=str(tmp_path / name),
            **TASK_VECTOR_OPTIONS[method],
        )
        outputs.append(merge_models(config))
    first, second = (load_file(o / "model.safetensors") for o in outputs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(v.dtype == torch.bfloat16 for v in first.values())
    model = AutoModelForCausalLM.from_pretrained(outputs[0])
    assert model.dtype == torch.bfloat16
    base = load_file(models["base"] / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(first[name].float(), base[name].to(torch.bfloat16).float())


def test_sharded_checkpoints_are_read(models: dict[str, Path], tmp_path: Path) -> None:
    sharded = save_tiny(tmp_path / "sharded", seed=1, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    config = MergeConfig(
        method="linear", models=[{"path": str(sharded)}, {"path": str(models["a"])}], output_dir=str(tmp_path / "m")
    )
    torch.testing.assert_close(logits(merge_models(config)), logits(models["a"]))


def test_architecture_mismatch_is_a_clear_error(
    models: dict[str, Path], write_yaml: Callable[..., Path], tmp_path: Path
) -> None:
    wide = save_tiny(tmp_path / "wide", seed=1, hidden_size=32)
    config = {"method": "linear", "models": [{"path": str(models["a"])}, {"path": str(wide)}], "output_dir": "out"}
    code, output = run_cli(write_yaml, config)
    assert code == 2
    assert "different architectures" in output and "(260, 16)" in output and "(260, 32)" in output
    assert "Traceback" not in output


def test_tokenizer_mismatch_is_a_clear_error(
    models: dict[str, Path], write_yaml: Callable[..., Path], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(models["b"], other)
    # Same number of tokens, so the embedding shapes agree, but one id means another token.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = other / name
        path.write_text(path.read_text().replace("<|pad|>", "<|padding|>"))
    config = {"method": "linear", "models": [{"path": str(models["a"])}, {"path": str(other)}], "output_dir": "out"}
    code, output = run_cli(write_yaml, config)
    assert code == 2
    assert "different tokenizers" in output and "<|padding|>" in output


def test_existing_output_needs_overwrite(models: dict[str, Path], write_yaml: Callable[..., Path]) -> None:
    config = {"method": "linear", "models": [{"path": str(models["a"])}, {"path": str(models["b"])}]}
    config["output_dir"] = "out"
    assert run_cli(write_yaml, config)[0] == 0
    code, output = run_cli(write_yaml, config)
    assert code == 2 and "--overwrite" in output
    assert run_cli(write_yaml, config, "--overwrite")[0] == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"method": "ties", "density": 0.5}, "`method: ties` needs `base_model`"),
        ({"method": "slerp", "t": 0.5, "extra_model": True}, "exactly two `models`; 3 given"),
        ({"method": "slerp"}, "`method: slerp` needs `t`"),
        ({"method": "linear", "density": 0.5}, "`density` is not used by `method: linear`"),
        ({"method": "della", "base_model": "base", "gamma": 0.1}, "`gamma` is not used by `method: della`"),
        ({"method": "passthrough"}, "`method: passthrough` takes exactly one of `models`; 2 given"),
        ({"method": "model_stock", "base_model": "a"}, "at least two `models` besides `base_model`"),
        ({"method": "linear", "slices": []}, "set either `models`"),
        ({"method": "linear", "bogus": 1}, "bogus: unknown key"),
    ],
)
def test_config_validation_errors(write_yaml: Callable[..., Path], config: dict[str, object], message: str) -> None:
    models = [{"path": "a"}, {"path": "b"}]
    if config.pop("extra_model", False):
        models.append({"path": "c"})
    path = write_yaml({**config, "models": models, "output_dir": "out"})
    with pytest.raises(ConfigError, match="Invalid config") as error:
        load_merge_config(path)
    assert message in str(error.value)


def test_a_mergekit_file_on_the_command_line(models: dict[str, Path], write_yaml: Callable[..., Path]) -> None:
    """`llmft merge-models mergekit.yml OUT --seed N` is `mergekit-yaml mergekit.yml OUT --random-seed N`."""
    text = (
        f"merge_method: dare_ties\nbase_model: {models['base']}\nmodels:\n"
        f"  - model: {models['a']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {models['b']}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: float32\n"
    )
    path = write_yaml(text, name="mergekit.yml")
    out = path.parent / "out"
    result = CliRunner().invoke(app, [str(path), str(out), "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert (out / "mergekit_config.yml").read_text() == text
    recorded = load_merge_config(out / "merge_config.yaml")
    assert recorded.method == "dare_ties" and recorded.seed == 5
    again = merge_models(recorded, output_dir=path.parent / "again")  # the record reproduces the merge
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)
    logits(out)


def test_no_output_directory_is_a_clear_error(models: dict[str, Path], write_yaml: Callable[..., Path]) -> None:
    path = write_yaml(f"merge_method: linear\nmodels:\n  - model: {models['a']}\n  - model: {models['b']}\n")
    result = CliRunner().invoke(app, [str(path)])
    assert result.exit_code == 2 and "give it on the command line" in result.output
    assert "Traceback" not in result.output


def test_large_outputs_are_sharded(models: dict[str, Path], tmp_path: Path) -> None:
    config = MergeConfig(
        method="linear",
        models=[{"path": str(models["a"])}, {"path": str(models["b"])}],
        max_shard_size="20KB",
        output_dir=str(tmp_path / "sharded"),
    )
    sharded = merge_models(config)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) >= 2
    single = merge_models(config.model_copy(update={"max_shard_size": "5GB"}), output_dir=tmp_path / "single")
    torch.testing.assert_close(logits(sharded), logits(single), rtol=0, atol=0)


def test_tokenizer_source(models: dict[str, Path], tmp_path: Path) -> None:
    base = {"method": "linear", "models": [{"path": str(models["a"])}, {"path": str(models["b"])}]}
    for choice in ("base", "union", str(models["b"])):
        output = merge_models(MergeConfig(**base, tokenizer_source=choice), output_dir=tmp_path / choice[-1])
        assert AutoTokenizer.from_pretrained(output).get_vocab() == build_tokenizer().get_vocab()
    with pytest.raises(UserError, match="is not one of the merged models"):
        merge_models(MergeConfig(**base, tokenizer_source="elsewhere"), output_dir=tmp_path / "x")


def test_a_model_that_is_nowhere_is_a_clear_error(models: dict[str, Path], write_yaml: Callable[..., Path]) -> None:
    config = {"method": "linear", "models": [{"path": str(models["a"])}, {"path": "some-org/not-downloaded"}]}
    code, output = run_cli(write_yaml, {**config, "output_dir": "out"})
    assert code == 2 and "not found" in output and "huggingface-cli download some-org/not-downloaded" in output
