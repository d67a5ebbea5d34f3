"""Tiny Llama models for the merge tests, the mergekit configs compared, and running both mergers.

`family(root)` saves a random base and three models made from it: `a` changes every tensor, `b` leaves layer 1's
attention as it is (zero task vectors, ties in magnitude), `c` changes every tensor again. Noise of the weights'
own scale keeps most tensor pairs far from parallel (SLERP's spherical branch) while the norm weights, ones plus
small noise, stay within mergekit's |cos| > 0.9995 (its linear fallback). Used by
tests/e2e/test_merge_mergekit.py and benchmarks/compare_mergekit.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

# Layer count 3 so that gradients and slices have a middle layer.
SHAPE = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
MODELS = ("base", "a", "b", "c")


def save_llama(directory: Path, seed: int, base: Path | None = None, keep: str | None = None, **shape: object) -> Path:
    """A random tiny Llama, or `base` plus noise on every tensor whose name does not contain `keep`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**SHAPE, **shape}))
    if base is not None:
        generator = torch.Generator().manual_seed(seed)
        tensors = load_file(base / "model.safetensors")
        for name, tensor in tensors.items():
            if keep is None or keep not in name:
                tensors[name] = tensor + tensor.std().clamp(min=0.02) * torch.randn(tensor.shape, generator=generator)
        model.load_state_dict(tensors)
    model.save_pretrained(directory)
    return directory


def save_random_llama(directory: Path, seed: int, **shape: object) -> Path:
    """A Llama of independent random weights, written without building the model (fast at any size)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**SHAPE, **shape})
    with torch.device("meta"):
        names = {name: tuple(p.shape) for name, p in LlamaForCausalLM(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: 0.02 * torch.randn(size, generator=generator) for name, size in names.items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(directory)
    return directory


def family(root: Path) -> dict[str, Path]:
    base = save_llama(root / "base", 0)
    return {
        "base": base,
        "a": save_llama(root / "a", 1, base),
        "b": save_llama(root / "b", 2, base, keep="layers.1.self_attn"),
        "c": save_llama(root / "c", 3, base),
    }


# mergekit configs as they are written on model cards; `{a}` and so on are the models' paths.
CASES: dict[str, str] = {
    "linear": """
merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 0.3}}
  - model: {b}
    parameters: {{weight: 0.7}}
dtype: float32
""",
    "linear_no_normalize": """
merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 0.3}}
  - model: {b}
    parameters: {{weight: 0.5}}
parameters: {{normalize: false}}
dtype: float32
""",
    "slerp": """
merge_method: slerp
base_model: {a}
models:
  - model: {a}
  - model: {b}
parameters: {{t: 0.3}}
dtype: float32
""",
    "slerp_gradient": """
slices:
  - sources:
      - model: {a}
        layer_range: [0, 3]
      - model: {b}
        layer_range: [0, 3]
merge_method: slerp
base_model: {b}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.5}}
  - model: {b}
    parameters: {{weight: 0.8}}
parameters: {{lambda: 0.9}}
dtype: float32
""",
    "ties": """
merge_method: ties
base_model: {base}
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 1.0, density: 0.4}}
  - model: {b}
    parameters: {{weight: 0.6, density: 0.4}}
parameters: {{normalize: true, int8_mask: true}}
dtype: float32
""",
    "ties_rescaled": """
merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters:
      weight: 1.0
      density: [0.2, 0.7]
  - model: {b}
    parameters: {{weight: 0.6}}
parameters: {{density: 0.5, normalize: false, rescale: true}}
dtype: float32
""",
    "dare_ties": """
merge_method: dare_ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.4, density: 0.3}}
parameters: {{int8_mask: true}}
dtype: float32
""",
    "dare_linear": """
merge_method: dare_linear
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.4, density: 0.3}}
dtype: float32
""",
    "breadcrumbs": """
merge_method: breadcrumbs
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.7, density: 0.6, gamma: 0.05}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.9, gamma: 0.2}}
dtype: float32
""",
    "breadcrumbs_ties": """
merge_method: breadcrumbs_ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.7, density: 0.6}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
parameters: {{gamma: 0.1}}
dtype: float32
""",
    "della": """
merge_method: della
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.7, density: 0.5, epsilon: 0.1}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.6, epsilon: 0.2}}
parameters: {{lambda: 1.1}}
dtype: float32
""",
    "della_linear": """
merge_method: della_linear
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.7, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.4}}
parameters: {{epsilon: 0.05}}
dtype: float32
""",
    "model_stock": """
merge_method: model_stock
base_model: {base}
models:
  - model: {a}
  - model: {b}
  - model: {c}
dtype: float32
""",
    "model_stock_filter_wise": """
merge_method: model_stock
base_model: {base}
models:
  - model: {a}
  - model: {c}
parameters: {{filter_wise: true}}
dtype: float32
""",
    "nuslerp": """
merge_method: nuslerp
models:
  - model: {a}
    parameters: {{weight: 0.4}}
  - model: {b}
    parameters: {{weight: 0.6}}
dtype: float32
""",
    "nuslerp_base_rows": """
merge_method: nuslerp
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.4}}
  - model: {c}
    parameters: {{weight: 0.6}}
parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}
dtype: float32
""",
    "nuslerp_columns": """
merge_method: nuslerp
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
    parameters: {{weight: 1.0}}
parameters: {{nuslerp_flatten: false}}
dtype: float32
""",
    "passthrough": """
slices:
  - sources:
      - model: {a}
        layer_range: [0, 2]
  - sources:
      - model: {b}
        layer_range: [1, 3]
        parameters:
          scale:
            - filter: o_proj
              value: 0.0
            - filter: down_proj
              value: 0.5
            - value: 1.0
merge_method: passthrough
dtype: float32
""",
}
# Seed of mergekit's --random-seed and llmft's `seed` for the randomised methods.
SEED = 7


def write_case(name: str, models: dict[str, Path], directory: Path) -> Path:
    path = directory / f"{name}.yml"
    path.write_text(CASES[name].format(**{k: str(v) for k, v in models.items()}).lstrip(), encoding="utf-8")
    return path


def run_mergekit(config: Path, output: Path) -> Path:
    """mergekit's own merge of a config file (its Python API, as `mergekit-yaml --random-seed SEED` runs it)."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    merge = MergeConfiguration.model_validate(yaml.safe_load(config.read_text()))
    options = MergeOptions(random_seed=SEED, quiet=True, copy_tokenizer=False, write_model_card=False)
    run_merge(merge, str(output), options)
    return output


def run_llmft(config: Path, output: Path) -> Path:
    from llm_finetuning.export.merge_config import load_merge_config
    from llm_finetuning.export.merge_models import merge_models

    merge = load_merge_config(config)
    merge.seed = SEED
    return merge_models(merge, output_dir=output)


def compare(ours: Path, theirs: Path, cast: bool = False) -> dict[str, float]:
    """Tensors, largest absolute difference, elements differing by more than 1e-5, and all elements; the dtypes
    must agree unless `cast`."""
    mine, reference = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    if mine.keys() != reference.keys():
        raise AssertionError(f"tensor names differ: {sorted(mine.keys() ^ reference.keys())}")
    worst, differing, total = 0.0, 0, 0
    for name, tensor in reference.items():
        assert (cast or mine[name].dtype == tensor.dtype) and mine[name].shape == tensor.shape, name
        gap = (mine[name].double() - tensor.double()).abs()
        worst = max(worst, float(gap.max()) if gap.numel() else 0.0)
        differing += int((gap > 1e-5).sum())
        total += tensor.numel()
    return {"tensors": len(reference), "max_abs": worst, "differing": differing, "elements": total}
