"""The Unsloth backend (`model.backend: unsloth`): Unsloth loads the model and attaches the LoRA adapter.

Unsloth's loader swaps the model's attention, RoPE, RMSNorm and MLP for its Triton kernels (and quantizes the base to
4 or 8 bits with bitsandbytes); its `get_peft_model` attaches a PEFT LoRA and runs the LoRA projections through its
fused kernels, with its own (offloaded) gradient checkpointing.

Everything else stays the toolkit's: the tokenizer (loaded and prepared before the model, because the data is
tokenized with it and `final/` saves it; Unsloth's tokenizer fixes are off so it cannot resize the vocabulary behind
our back), the data, TRL's trainer, and `final/`: Unsloth's adapter is a PEFT `PeftModel`, so it saves as a plain
adapter that transformers + PEFT load without Unsloth. Padding-free and packed batches are used when the model,
checked by running it, keeps packed examples apart (Unsloth's kernels read the example boundaries from the restarted
position ids). The plain LM head of `models/lm_head.py` never applies: it replaces TRL's head only where Triton is
missing, and Unsloth needs a CUDA GPU with Triton.

Unsloth patches transformers, TRL and PEFT when it is imported; imported after them (as happens once a process has
imported the training code) its model kernels still apply, but TRL's trainer classes are already bound, so Unsloth's
trainer-side patches do not. `import_unsloth` says so. This module imports none of those libraries itself, so a
caller can import it, and Unsloth through it, first.

What this backend refuses in the config (adapters other than LoRA/DoRA, methods other than SFT and pretraining, ...)
is checked with the config (`config/backends.py`); what depends on the machine (the package, a GPU, one process) here.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llm_finetuning.config.adapters import AnyAdapter, DoraAdapter, LoraAdapter
from llm_finetuning.config.schema import Config, ModelConfig
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.runs import distributed

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

INSTALL = "pip install 'llm-finetuning[unsloth]'"
PATCHED_ON_IMPORT = ("trl", "transformers", "peft")  # what Unsloth patches when imported (its own list)
BACKEND_ATTRIBUTE = "_llmft_backend"  # set on the models Unsloth loaded, so their adapter is attached by Unsloth too


def cuda_available() -> bool:
    return torch.cuda.is_available()


def is_installed() -> bool:
    if sys.modules.get("unsloth") is not None:  # imported already (a None entry blocks the import)
        return True
    return importlib.util.find_spec("unsloth") is not None


def environment_problems() -> list[str]:
    """Why Unsloth cannot train on this machine (empty when it can): each message names the key and what to do."""
    problems = []
    if not is_installed():
        problems.append(
            f"model.backend: unsloth needs the Unsloth package, which is not installed: `{INSTALL}` (CUDA GPUs), "
            "or set `model.backend: transformers`."
        )
    if not cuda_available():
        problems.append(
            "model.backend: unsloth runs Unsloth's Triton kernels, which need a CUDA GPU, and no GPU is visible here. "
            "Train on a CUDA machine, or set `model.backend: transformers`."
        )
    return problems


def check_unsloth(config: Config) -> None:
    """Refuse `model.backend: unsloth` where this machine cannot run it, before the data and the model load."""
    if config.model.backend == "unsloth":
        check_environment()


def check_environment() -> None:
    """Refuse before anything slow happens: Unsloth missing, no CUDA GPU, or several processes."""
    problems = environment_problems()
    if problems:
        raise ConfigError(problems[0])
    if distributed.world_size() > 1:
        raise ConfigError(
            f"model.backend: unsloth trains in one process here ({distributed.world_size()} were started): Unsloth's "
            "kernels and adapter are not set up for DDP/FSDP/DeepSpeed in this integration. Run without "
            "`--nproc`/`--nnodes`, or set `model.backend: transformers`."
        )


def import_unsloth() -> Any:
    """Import Unsloth (checking the machine first), warning once when transformers/TRL/PEFT were imported before it."""
    if sys.modules.get("unsloth") is not None:
        return sys.modules["unsloth"]
    check_environment()
    early = [name for name in PATCHED_ON_IMPORT if name in sys.modules]
    if early:
        logger.warning(
            "Unsloth is imported after %s (already imported in this process), so the patches it makes to them at "
            "import are missed: the model still runs Unsloth's kernels (attention, RoPE, RMSNorm, MLP and LoRA "
            "projections, gradient checkpointing), but TRL's trainer classes keep their own code, without Unsloth's "
            "trainer-side optimisations, and memory use or speed may fall short of Unsloth's own scripts. Import "
            "Unsloth first to get them (`import unsloth` before llm_finetuning or transformers).",
            ", ".join(early),
        )
    with warnings.catch_warnings():
        # Unsloth's own warning says the same as ours, which names what it costs here.
        warnings.filterwarnings("ignore", message=".*Unsloth should be imported before.*")
        import unsloth
    logger.info("Unsloth %s", getattr(unsloth, "__version__", "(unknown version)"))
    return unsloth


def loaded_by_unsloth(model: Any) -> bool:
    """Whether `model` (or the model a PEFT wrapper holds) was loaded by this backend."""
    return getattr(model, BACKEND_ATTRIBUTE, None) == "unsloth"


def from_pretrained_arguments(config: ModelConfig, max_seq_length: int) -> dict[str, Any]:
    """Keyword arguments of `FastLanguageModel.from_pretrained` for the `model:` section."""
    arguments: dict[str, Any] = {
        "model_name": config.name,
        "max_seq_length": max_seq_length,
        "dtype": None if config.dtype == "auto" else getattr(torch, config.dtype),  # None: Unsloth picks bf16/fp16
        "load_in_4bit": config.quantization == "nf4",  # Unsloth's 4-bit is nf4 with double quantization
        "load_in_8bit": config.quantization == "int8",
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        # The checkpoint named is the one trained and the one `final/` points at: no swap for Unsloth's mirrors.
        "use_exact_model_name": True,
        "fix_tokenizer": False,  # the toolkit's tokenizer is used; Unsloth's fixes could resize the embeddings
    }
    if not config.allow_unsafe_weights:
        arguments["use_safetensors"] = True  # as the transformers backend: pickle weights only when allowed
    if config.device_map is not None:
        arguments["device_map"] = config.device_map
    return arguments


def load_model(config: ModelConfig, max_seq_length: int | None, head: str = "causal_lm") -> PreTrainedModel:
    """Load `model.name` through Unsloth's `FastLanguageModel` (its tokenizer is not used)."""
    if head != "causal_lm":
        raise ConfigError("model.backend: unsloth loads causal LMs only; set `model.backend: transformers`.")
    if max_seq_length is None:
        raise ValueError("the Unsloth backend needs the longest sequence (data.max_length) when it loads the model")
    check_environment()
    unsloth = import_unsloth()
    arguments = from_pretrained_arguments(config, max_seq_length)
    try:
        model, _ = unsloth.FastLanguageModel.from_pretrained(**arguments)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise UserError(f"Could not load the model `{config.name}` through Unsloth (model.name): {exc}") from None
    setattr(model, BACKEND_ATTRIBUTE, "unsloth")
    bits = {"nf4": "4-bit nf4", "int8": "8-bit"}.get(config.quantization, "16-bit")
    logger.info("Unsloth loaded %s (%s, sequences up to %d tokens)", config.name, bits, max_seq_length)
    return model


def target_modules(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Module names to adapt. `all-linear` becomes the names of every linear layer but the output head, as PEFT reads
    it, because older Unsloth versions take the value as a list of names."""
    if targets != "all-linear":
        return list(targets)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if head is not None:
        names -= {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head}
    return sorted(names)


def get_peft_model_arguments(
    model: nn.Module, adapter: LoraAdapter, gradient_checkpointing: bool, seed: int
) -> dict[str, Any]:
    """Keyword arguments of `FastLanguageModel.get_peft_model` for the `adapter:` section."""
    arguments: dict[str, Any] = {
        "r": adapter.r,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": target_modules(model, adapter.target_modules),
        "bias": adapter.bias,
        # Unsloth's checkpointing offloads activations to CPU memory; it replaces transformers' own.
        "use_gradient_checkpointing": "unsloth" if gradient_checkpointing else False,
        "random_state": seed,  # Unsloth re-seeds with it before initialising the adapter
        "use_rslora": adapter.use_rslora,
        "modules_to_save": list(adapter.modules_to_save) or None,
        "init_lora_weights": True if adapter.init == "default" else adapter.init,
    }
    if isinstance(adapter, DoraAdapter):
        # Passed on to PEFT's LoraConfig; Unsloth's fused LoRA kernels leave DoRA layers to PEFT's own forward.
        arguments["use_dora"] = True
    return arguments


def apply_adapter(model: PreTrainedModel, adapter: AnyAdapter, gradient_checkpointing: bool, seed: int | None) -> Any:
    """Attach the LoRA/DoRA adapter through Unsloth: a PEFT `PeftModel` whose projections run Unsloth's kernels."""
    if not isinstance(adapter, LoraAdapter):  # the schema refuses these; kept for callers that skip it
        raise ConfigError(
            f"adapter.method: {adapter.method} cannot be attached by `model.backend: unsloth` (LoRA and DoRA only)."
        )
    if seed is None:
        raise ValueError("the Unsloth backend needs training.seed to initialise the adapter")
    unsloth = import_unsloth()
    arguments = get_peft_model_arguments(model, adapter, gradient_checkpointing, seed)
    wrapped = unsloth.FastLanguageModel.get_peft_model(model, **arguments)
    logger.info("Unsloth LoRA on %s", ", ".join(arguments["target_modules"]))
    return wrapped
