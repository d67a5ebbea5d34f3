"""What this installation is made of: package versions, the device, optional extras."""

from __future__ import annotations

import importlib.util
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

CORE_PACKAGES = (
    "llm-finetuning",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "tokenizers",
    "safetensors",
    "pydantic",
)
# extra name -> (distribution that provides it, what it enables)
EXTRAS = {
    "bitsandbytes": ("bitsandbytes", "4/8-bit quantization (QLoRA), 8-bit optimizers"),
    "tensorboard": ("tensorboard", "tracking.report_to: tensorboard"),
    "wandb": ("wandb", "tracking.report_to: wandb"),
    "mlflow": ("mlflow", "tracking.report_to: mlflow"),
    "deepspeed": ("deepspeed", "DeepSpeed ZeRO through accelerate"),
    "flash_attn": ("flash-attn", "model.attn_implementation: flash_attention_2"),
    "liger": ("liger-kernel", "training.liger_kernel: Liger's Triton kernels"),
    "unsloth": ("unsloth", "model.backend: unsloth"),
    "vllm": ("vllm", "method.generation_backend: vllm"),
}


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    return {name: _version(name) or "not installed" for name in CORE_PACKAGES}


def extras() -> dict[str, dict[str, Any]]:
    return {
        name: {"installed": _version(dist) is not None, "version": _version(dist), "enables": what}
        for name, (dist, what) in EXTRAS.items()
    }


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": __import__("os").cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(),
            }
            for i in range(torch.cuda.device_count())
        ]
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["mps"] = True
    info["device"] = "cuda" if torch.cuda.is_available() else ("mps" if info.get("mps") else "cpu")
    return info


def fast_path_info() -> dict[str, Any]:
    """What this machine can do (`fast_path.detect`) and the fast path of SFT with the default settings on it."""
    from dataclasses import asdict

    from llm_finetuning.config.schema import Config
    from llm_finetuning.models import fast_path

    caps = fast_path.capabilities()
    defaults = Config.model_validate({"data": {"train": {"path": "train.jsonl", "format": "alpaca"}}})
    path = fast_path.plan(defaults, caps)
    return {"capabilities": asdict(caps), "sft_defaults": dict(path.lines())}
