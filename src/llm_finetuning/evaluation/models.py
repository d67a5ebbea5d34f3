"""What can be evaluated: a run directory, a model folder or hub id, a GGUF file, and a run's variants
(its base model, the adapter on the base, the merged model, the GGUF export).

Every variant of a run is evaluated with the run's trained tokenizer (the GGUF export with the tokenizer it
embeds), so all of them see exactly the same prompts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_finetuning.errors import RunDirError, UserError
from llm_finetuning.runs.rundir import RunDir

logger = logging.getLogger(__name__)

VARIANTS = ("base", "adapter", "full", "merged", "gguf")
"""`base`: the model training started from; `adapter`: final/ adapter on the base; `full`: final/ holding a
whole model; `merged`: RUN/merged; `gguf`: the first `*.gguf` under RUN/export-gguf (or RUN/export-ollama)."""


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    """The folder (or `.gguf` file) it loads from."""


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "final").is_dir()


def base_model_path(run_dir: str | Path) -> str:
    """Where a run's starting model lives: the adapter's base, else RUN/base (a tiny model), else the config's
    `model.name` (a hub id or folder)."""
    run = RunDir(Path(run_dir))
    adapter = run.final / "adapter_config.json"
    if adapter.is_file():
        return json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"]
    if (run.base / "config.json").is_file():
        return str(run.base)
    if run.config.is_file():
        name = (yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}).get("model", {}).get("name")
        if name and name != "tiny":
            return name
    raise RunDirError(f"{run.root}: cannot tell which base model the run started from (no adapter, base/ or config)")


def run_variants(run_dir: str | Path) -> list[Variant]:
    """The variants a run has, in report order: base, then adapter or full, merged and gguf where present."""
    run = RunDir(Path(run_dir))
    if not run.final.is_dir():
        raise RunDirError(f"{run.root}: no final/ directory; evaluate a completed run.")
    found = [Variant("base", Path(base_model_path(run.root)))]
    kind = "adapter" if (run.final / "adapter_config.json").is_file() else "full"
    found.append(Variant(kind, run.final))
    if (run.root / "merged" / "config.json").is_file():
        found.append(Variant("merged", run.root / "merged"))
    for folder in ("export-gguf", "export-ollama"):
        files = sorted((run.root / folder).glob("*.gguf")) if (run.root / folder).is_dir() else []
        if files:
            found.append(Variant("gguf", files[0]))
            break
    return found


def _resize_for(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def load_gguf(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A GGUF file read back by transformers (dequantized to float32), with the tokenizer it embeds."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot load the GGUF file {path}: {exc}") from None
    return model.eval(), tokenizer


def load_target(target: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A run directory (merged/ if present, else final/), a model folder, a hub id or a `.gguf` file."""
    from llm_finetuning.serve.generation import load_for_inference

    if str(target).endswith(".gguf"):
        return load_gguf(target)
    return load_for_inference(target)


def load_variant(run_dir: str | Path, variant: Variant) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """One variant of a run, with the run's trained tokenizer (a GGUF with its own)."""
    from llm_finetuning.serve.generation import load_for_inference

    if variant.name == "gguf":
        return load_gguf(variant.path)
    if variant.name != "base":
        return load_for_inference(variant.path)
    tokenizer = AutoTokenizer.from_pretrained(str(RunDir(Path(run_dir)).final))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(variant.path))
    except OSError as exc:
        raise UserError(f"Cannot load the base model `{variant.path}`: {exc}") from None
    return _resize_for(model, tokenizer).eval(), tokenizer
