"""What `llmft serve` loads: a run (or model) and any number of adapters trained on the same base, each its own
model id, plus the context length the run was trained for."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_finetuning.errors import UserError
from llm_finetuning.models.sentence_kind import final_dir
from llm_finetuning.serve.engine import BASE, ServedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    served: list[ServedModel]
    trained_length: int | None
    """`data.max_length` of the run served, when it is a run directory."""


def resolve(target: str | Path) -> Path:
    """A run directory's `merged/` (if complete) or `final/`; any other path as given."""
    return final_dir(Path(target))


def trained_length(target: str | Path) -> int | None:
    config = Path(target) / "config.yaml"
    if not config.is_file():
        return None
    try:
        value = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("max_length")
    except (yaml.YAMLError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def _adapter_base(path: Path) -> str | None:
    config = path / "adapter_config.json"
    return json.loads(config.read_text())["base_model_name_or_path"] if config.is_file() else None


def _same(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def _tokenizer(path: Path, fallback: PreTrainedTokenizerBase | None = None) -> PreTrainedTokenizerBase:
    if fallback is not None and not (path / "tokenizer_config.json").is_file():
        return fallback
    return AutoTokenizer.from_pretrained(str(path))


def load_served(target: str | Path, model_id: str, adapters: list[tuple[str, str]] | None = None) -> Loaded:
    """Load `target` as `model_id` and each `(name, run)` adapter onto the same base model.

    With adapters and a target that is itself a full model, the target stays reachable as `model_id` (the base,
    every adapter off); with a target that is an adapter run, `model_id` is that adapter."""
    adapters = adapters or []
    path = resolve(target)
    source = str(path) if path.exists() else str(target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        base_id = _adapter_base(path)
        base = AutoModelForCausalLM.from_pretrained(base_id or source)
        if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
            base.resize_token_embeddings(len(tokenizer))
        model: PreTrainedModel = base
        served = [ServedModel(model_id, tokenizer, None)]
        if base_id is not None:
            model = PeftModel.from_pretrained(base, path, adapter_name=model_id)
            served = [ServedModel(model_id, tokenizer, model_id if adapters else None)]
        elif adapters:
            served = [ServedModel(model_id, tokenizer, BASE)]
    except OSError as exc:
        raise UserError(f"Cannot load a model from `{target}`: {exc}") from None
    for name, run in adapters:
        if name in {s.id for s in served}:
            raise UserError(f"--adapter {name}={run}: the model id `{name}` is taken; give each adapter its own name")
        adapter_path = resolve(run)
        adapter_base = _adapter_base(adapter_path)
        if adapter_base is None:
            raise UserError(
                f"--adapter {name}={run}: no adapter there (adapter_config.json); a full model is served on its own"
            )
        if not _same(adapter_base, base_id or source):
            raise UserError(
                f"--adapter {name}={run}: trained on `{adapter_base}`, but the served base is `{base_id or source}`; "
                "serve adapters of one base together"
            )
        adapter_tokenizer = _tokenizer(adapter_path, tokenizer)
        if len(adapter_tokenizer) != len(tokenizer):
            raise UserError(
                f"--adapter {name}={run}: its tokenizer has {len(adapter_tokenizer)} tokens, the served model's "
                f"{len(tokenizer)}; it cannot share the base"
            )
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter_path), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, adapter_path, adapter_name=name)
        served.append(ServedModel(name, adapter_tokenizer, name))
        logger.info("adapter %s from %s", name, adapter_path)
    return Loaded(model.eval(), tokenizer, served, trained_length(target))
