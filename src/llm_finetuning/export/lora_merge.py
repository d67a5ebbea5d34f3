"""`llmft merge`: fold a run's adapter into its base and save a plain model (safetensors) in `RUN/merged`.

The adapter was trained against the base exactly as loaded for training: for a QLoRA run that is the 4-bit
base, so the base is loaded quantized again and dequantized before the merge; merging into the original
full-precision weights would give a model slightly different from the one that was evaluated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from peft import PeftModel
from peft.utils.integrations import dequantize_module_weight
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from llm_finetuning.errors import RunDirError
from llm_finetuning.runs.rundir import RunDir

logger = logging.getLogger(__name__)
INFO_FILE = "merge_info.json"


@dataclass
class MergeResult:
    path: Path
    merged: bool
    message: str


def _adapter_digest(final: Path) -> str:
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if (final / name).is_file():
            digest.update((final / name).read_bytes())
    return digest.hexdigest()


def dequantize(model: PreTrainedModel) -> PreTrainedModel:
    """Replace every bitsandbytes linear layer by a plain one holding its dequantized weight."""
    for name, module in list(model.named_modules()):
        if type(module).__name__ not in ("Linear4bit", "Linear8bitLt"):
            continue
        weight = dequantize_module_weight(module).to(torch.float32)
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        plain.weight.data.copy_(weight)
        if module.bias is not None:
            plain.bias.data.copy_(module.bias.data.float())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    for attribute in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
        if hasattr(model, attribute):
            setattr(model, attribute, False)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    return model


def _load_base(base_path: str, run_config: dict) -> PreTrainedModel:
    model_section = run_config.get("model", {})
    quantization = model_section.get("quantization", "none")
    if quantization == "none":
        return AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    from llm_finetuning.config.schema import ModelConfig
    from llm_finetuning.models.loading import quantization_config

    config = ModelConfig.model_validate(
        {
            "name": base_path,
            "quantization": quantization,
            "double_quantization": model_section.get("double_quantization", True),
            "dtype": "float32",
        }
    )
    base = AutoModelForCausalLM.from_pretrained(
        base_path, quantization_config=quantization_config(config, torch.float32), dtype=torch.float32
    )
    return dequantize(base)


def merge_run(run_dir: str | Path, force: bool = False) -> MergeResult:
    """Merge `run_dir/final`'s adapter into its base; a no-op (with a message) when already done."""
    run = RunDir(Path(run_dir))
    final = run.final
    if not final.is_dir():
        raise RunDirError(f"{run.root}: no final/ directory; only a completed run can be merged.")
    adapter = final / "adapter_config.json"
    if not adapter.is_file():
        return MergeResult(final, False, f"{final} already holds a full model (no adapter): nothing to merge.")
    merged = run.root / "merged"
    digest = _adapter_digest(final)
    info = merged / INFO_FILE
    if not force and info.is_file() and json.loads(info.read_text()).get("adapter_sha256") == digest:
        return MergeResult(merged, False, f"{merged} already holds this adapter merged: nothing to do.")
    base_path = json.loads(adapter.read_text())["base_model_name_or_path"]
    run_config = (
        yaml.safe_load((final / "llmft_config.yaml").read_text()) if (final / "llmft_config.yaml").is_file() else {}
    )
    tokenizer = AutoTokenizer.from_pretrained(final)
    base = _load_base(base_path, run_config)
    if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(base, final).merge_and_unload()
    model.save_pretrained(merged, safe_serialization=True)
    tokenizer.save_pretrained(merged)
    info.write_text(json.dumps({"adapter_sha256": digest, "base": base_path, "from": str(final)}, indent=2) + "\n")
    logger.info("Merged %s into %s", final, merged)
    return MergeResult(merged, True, f"merged the adapter of {final} into {merged}")
