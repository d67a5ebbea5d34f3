"""The one place that decides the fast path of a run on its device: attention on packed and padding-free rows, the
LM head, weight dtype and autocast, Liger, optimizer and compile.

`detect()` reads what this machine and its packages can do into `Capabilities`; `plan(config, capabilities)` turns
a config into a `FastPath` of choices, each with the reason it was taken. `plan` is pure (no torch import, no
device query), so unit tests run every branch with faked capabilities and the memory estimate (torch-free) asks it
the same questions for a GPU it is not running on. Nothing else in the package branches on the device for these
choices: the training path, `llmft check` and `llmft env` all read the plan.

Attention on rows that hold several examples (packing, padding-free batches), best first:
- CUDA with flash-attn installed: `flash_attention_2`, transformers' flash-attention with its varlen kernel;
- CUDA with torch's own varlen kernel (`torch.nn.attention.varlen`, torch >= 2.9, sm80+): `llmft_torch_varlen`,
  one variable-length flash call per layer over the whole row (`models/varlen_kernel.py`);
- CUDA/XPU with flex attention and Triton: `flex_attention`, transformers' flex path with a document mask;
- CPU and MPS: `llmft_sdpa_varlen`, sdpa on each example (measured fastest on CPU: docs/performance.md);
- otherwise sdpa with a block mask over the whole row, and padding-free batches are not used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_finetuning.errors import ConfigError
from llm_finetuning.precision import CPU_BF16_MIN_HIDDEN, cpu_autocast, cpu_has_native_bf16

if TYPE_CHECKING:
    from llm_finetuning.config.schema import Config

logger = logging.getLogger(__name__)

PER_EXAMPLE_SDPA = "llmft_sdpa_varlen"
TORCH_VARLEN = "llmft_torch_varlen"
# What each name of `model.attn_implementation` runs (the two toolkit kernels have short names in the schema).
ATTENTION_NAMES = {"torch_varlen": TORCH_VARLEN, "sdpa_per_example": PER_EXAMPLE_SDPA}
# Implementations that attend per example within one row (no mask over the whole row): padding-free pays with them.
ROW_ATTENTION = ("flash_attention_2", TORCH_VARLEN, "flex_attention", PER_EXAMPLE_SDPA)
# On CPU, per-example sdpa runs examples up to this many tokens with the math kernel: its backward is 1.9x faster
# there than the flash kernel's in bf16 (docs/performance.md); above, flash wins and keeps memory linear.
CPU_MATH_MAX_LENGTH = 192
FLASH_MIN_CAPABILITY = (8, 0)  # flash kernels (flash-attn 2, torch varlen) need Ampere or newer


@dataclass(frozen=True)
class Capabilities:
    """What the training device and the installed packages can do."""

    device: str = "cpu"
    """`cuda`, `xpu`, `mps` or `cpu`."""
    name: str = ""
    compute_capability: tuple[int, int] | None = None
    """CUDA's (major, minor), e.g. (9, 0) on an H100/H200."""
    bf16: bool = False
    """bf16 matmuls are native: a GPU that supports bf16, or a CPU with AVX512-BF16/AMX."""
    triton: bool = False
    torch_varlen: bool = False
    """`torch.nn.attention.varlen.varlen_attn` exists in this torch."""
    flex_attention: bool = False
    flash_attn: bool = False
    """The flash-attn package is installed."""
    liger: bool = False
    """liger-kernel is installed."""
    fused_adamw: bool = True
    """torch's fused AdamW runs on this device."""
    torch_version: str = ""

    def describe(self) -> str:
        parts = [self.device]
        if self.name:
            parts.append(self.name)
        if self.compute_capability:
            parts.append(f"sm{self.compute_capability[0]}{self.compute_capability[1]}")
        parts.append("bf16" if self.bf16 else "no native bf16")
        return ", ".join(parts)


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.value}: {self.reason}"


@dataclass(frozen=True)
class FastPath:
    """The choices of one run on one device, each with its reason."""

    capabilities: Capabilities
    attention: Choice
    """The attention implementation of packed and padding-free rows (`ROW_ATTENTION`, `sdpa`, `eager`, `unsloth`)."""
    padding_free: Choice
    """`on` when unpacked SFT batches go padding-free (still subject to the isolation check on the model)."""
    lm_head: Choice
    """`trl` (TRL's fused Triton head) or `plain` (the toolkit's head over labelled positions, `models/lm_head.py`)."""
    dtype: Choice
    """Weight dtype the model loads in (`model.dtype`)."""
    precision: Choice
    """Autocast: `bf16`, `fp16` or `no` (`training.mixed_precision`)."""
    liger: Choice
    """`on` or `off` (`training.liger_kernel`)."""
    optimizer: Choice
    compile: Choice
    """`on` or `off` (`training.compile`)."""
    sdpa_math_max_length: int = 0
    """Per-example sdpa runs examples up to this length with the math kernel (CPU only; 0 elsewhere)."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def device(self) -> str:
        return self.capabilities.device

    @property
    def uses_row_attention(self) -> bool:
        return self.attention.value in ROW_ATTENTION

    def lines(self) -> list[tuple[str, str]]:
        """(what, choice and reason) rows, as `llmft train`, `llmft check` and `llmft env` show them."""
        return [
            ("device", self.capabilities.describe()),
            ("attention (packed/padding-free rows)", str(self.attention)),
            ("padding-free batches", str(self.padding_free)),
            ("LM head", str(self.lm_head)),
            ("weights", str(self.dtype)),
            ("autocast", str(self.precision)),
            ("Liger kernels", str(self.liger)),
            ("optimizer", str(self.optimizer)),
            ("torch.compile", str(self.compile)),
        ]


# ------------------------------------------------------------------------------------------------- detection
def detect() -> Capabilities:
    """This machine's training device and what its packages can do (the first GPU for CUDA)."""
    import torch

    found = {name: importlib.util.find_spec(name) is not None for name in ("triton", "flash_attn", "liger_kernel")}
    common: dict[str, Any] = {
        "triton": found["triton"],
        "flash_attn": found["flash_attn"],
        "liger": found["liger_kernel"],
        "torch_varlen": _has_torch_varlen(),
        "flex_attention": importlib.util.find_spec("torch.nn.attention.flex_attention") is not None,
        "torch_version": torch.__version__,
    }
    if torch.cuda.is_available():
        return Capabilities(
            device="cuda",
            name=torch.cuda.get_device_name(0),
            compute_capability=tuple(torch.cuda.get_device_capability(0)),
            bf16=torch.cuda.is_bf16_supported(),
            **common,
        )
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return Capabilities(device="xpu", name=xpu.get_device_name(0), bf16=True, **common)
    if torch.backends.mps.is_available():
        return Capabilities(device="mps", name="Apple GPU", **{**common, "triton": False})
    import platform

    name = platform.processor() or platform.machine()
    return Capabilities(device="cpu", name=name, bf16=cpu_has_native_bf16(), **common)


def _has_torch_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------------ plan
def plan(config: Config, capabilities: Capabilities, hidden_size: int | None = None) -> FastPath:
    """The fast path of `config` on a device with `capabilities`; raises ConfigError where a setting cannot run.

    `hidden_size` is the model's width (CPU autocast pays only from `CPU_BF16_MIN_HIDDEN` up); None counts as wide.
    """
    caps = capabilities
    attention = attention_choice(config, caps)
    return FastPath(
        capabilities=caps,
        attention=attention,
        padding_free=padding_free_choice(config, caps, attention),
        lm_head=lm_head_choice(caps),
        dtype=dtype_choice(config.model.dtype, caps),
        precision=precision_choice(config.training.mixed_precision, caps, hidden_size),
        liger=liger_choice(config, caps),
        optimizer=optimizer_choice(config.training.optimizer, caps),
        compile=compile_choice(config, caps),
        sdpa_math_max_length=CPU_MATH_MAX_LENGTH if caps.device == "cpu" else 0,
    )


def _flash_capable(caps: Capabilities) -> bool:
    return caps.device == "cuda" and (caps.compute_capability or (0, 0)) >= FLASH_MIN_CAPABILITY


def attention_choice(config: Config, caps: Capabilities) -> Choice:
    """The attention of rows that hold several examples (packing, padding-free batches)."""
    asked = config.model.attn_implementation
    if config.model.backend == "unsloth":
        return Choice("unsloth", "model.backend: unsloth picks its own kernels")
    if asked != "auto":
        name = ATTENTION_NAMES.get(asked, asked)
        _check_attention(name, caps)
        return Choice(name, f"model.attn_implementation: {asked}")
    if caps.device == "cuda":
        if caps.flash_attn and _flash_capable(caps):
            return Choice("flash_attention_2", "flash-attn installed: its varlen kernel, one call per layer")
        if caps.torch_varlen and _flash_capable(caps):
            return Choice(TORCH_VARLEN, "torch's varlen flash kernel, one call per layer")
    if caps.device in ("cuda", "xpu") and caps.flex_attention and caps.triton:
        return Choice("flex_attention", "flex attention with a document mask, no varlen flash kernel here")
    if caps.device in ("cpu", "mps"):
        return Choice(PER_EXAMPLE_SDPA, f"sdpa per example: the fastest measured on {caps.device.upper()}")
    return Choice("sdpa", "no variable-length kernel on this device: a block mask over the whole row")


def _check_attention(name: str, caps: Capabilities) -> None:
    if name == "flash_attention_2" and not caps.flash_attn:
        raise ConfigError(
            "model.attn_implementation: flash_attention_2 needs the flash-attn package (`pip install flash-attn`, "
            "CUDA GPUs); use `auto`, which picks torch's own varlen kernel where it exists."
        )
    if name == TORCH_VARLEN and not (caps.torch_varlen and _flash_capable(caps)):
        why = "this torch has no torch.nn.attention.varlen" if not caps.torch_varlen else "it needs a CUDA GPU, sm80+"
        raise ConfigError(f"model.attn_implementation: torch_varlen: {why}; use `auto`.")
    if name == "flex_attention" and not caps.flex_attention:
        raise ConfigError("model.attn_implementation: flex_attention needs torch >= 2.5; use `auto`.")


def padding_free_choice(config: Config, caps: Capabilities, attention: Choice) -> Choice:
    """Whether unpacked SFT batches go end to end in one row (before the isolation check on the model)."""
    from llm_finetuning.config.schema import PROMPT_LEARNING

    if config.method.name != "sft":
        return Choice("off", f"method {config.method.name} batches are padded")
    if config.data.packing:
        return Choice("off", "data.packing: rows are packed instead")
    if not config.data.padding_free:
        return Choice("off", "data.padding_free: false")
    if config.adapter.method in PROMPT_LEARNING:
        return Choice("off", f"adapter {config.adapter.method} prepends its virtual tokens once per row")
    if config.training.per_device_batch_size < 2:
        return Choice("off", "a batch of one has no padding")
    if config.model.quantization != "none" and caps.device != "cuda":
        # bitsandbytes repacks 4-bit weights in place at an inference forward off CUDA, which the check is.
        return Choice("off", f"a {config.model.quantization} base off CUDA")
    if attention.value == "unsloth":
        return Choice("on", "if Unsloth's attention keeps examples apart, checked on the model")
    if attention.value not in ROW_ATTENTION:
        return Choice("off", f"{attention.value} would mask the whole row, which costs more than the padding saves")
    return Choice("on", f"{attention.value} attends per example, checked on the model")


def lm_head_choice(caps: Capabilities) -> Choice:
    if caps.triton and caps.device in ("cuda", "xpu"):
        return Choice("trl", "TRL's fused Triton head")
    # Without Triton TRL falls back to a slow torch loop (2.2x a plain head on CPU, docs/performance.md).
    return Choice("plain", "no Triton here: the toolkit's head over labelled positions only")


def dtype_choice(setting: str, caps: Capabilities) -> Choice:
    """`model.dtype`: `auto` is bfloat16 on a GPU that supports it and float32 elsewhere (CPU, older GPUs)."""
    if setting != "auto":
        return Choice(setting, "model.dtype")
    if caps.device in ("cuda", "xpu") and caps.bf16:
        return Choice("bfloat16", f"auto on a {caps.device.upper()} GPU with bf16")
    return Choice("float32", f"auto on {caps.device.upper()}" + ("" if caps.device == "cpu" else " without bf16"))


def precision_choice(setting: str, caps: Capabilities, hidden_size: int | None = None) -> Choice:
    """`training.mixed_precision` on this device: `bf16`, `fp16` or `no`."""
    if setting == "fp16" and caps.device != "cuda":
        raise ConfigError("training.mixed_precision: fp16 autocast needs a CUDA GPU; use `bf16` or `no` here.")
    if setting != "auto":
        return Choice(setting, "training.mixed_precision")
    if caps.device == "cuda":
        return Choice("bf16", "auto on a GPU with bf16") if caps.bf16 else Choice("fp16", "auto on a GPU without bf16")
    if caps.device == "xpu":
        return Choice("bf16" if caps.bf16 else "no", "auto on XPU")
    if caps.device == "mps":
        return Choice("no", "auto on MPS")
    value = cpu_autocast(hidden_size, caps.bf16)
    if not caps.bf16:
        return Choice(value, "auto: this CPU has no native bf16")
    if value == "no":
        return Choice(value, f"auto: hidden size {hidden_size} < {CPU_BF16_MIN_HIDDEN}, the casts would cost more")
    return Choice(value, "auto: native bf16 on this CPU")


def liger_choice(config: Config, caps: Capabilities) -> Choice:
    """`training.liger_kernel`; the refusals are those `llmft train` stops at before loading anything."""
    if not config.training.liger_kernel:
        hint = "; available here" if caps.liger and caps.device == "cuda" else ""
        return Choice("off", "training.liger_kernel: false" + hint)
    if config.model.backend == "unsloth":
        raise ConfigError(
            "training.liger_kernel: `model.backend: unsloth` patches the model with its own kernels; set "
            "`training.liger_kernel: false` or `model.backend: transformers`."
        )
    if not caps.liger:
        raise ConfigError(
            "training.liger_kernel: liger-kernel is not installed. `pip install 'llm-finetuning[liger]'` (CUDA GPUs), "
            "or set `training.liger_kernel: false`."
        )
    if caps.device != "cuda":
        raise ConfigError(
            "training.liger_kernel: Liger's kernels are Triton kernels for CUDA GPUs and no GPU is visible; set "
            "`training.liger_kernel: false` on this machine."
        )
    return Choice("on", "RMSNorm, RoPE and SwiGLU/GeGLU on the trained model; the loss head stays the trainer's")


def optimizer_choice(setting: str, caps: Capabilities) -> Choice:
    if setting == "adamw_torch_fused" and not caps.fused_adamw:
        return Choice("adamw_torch", f"torch's fused AdamW does not run on {caps.device}")
    return Choice(setting, "training.optimizer")


def compile_choice(config: Config, caps: Capabilities) -> Choice:
    if not config.training.compile:
        return Choice("off", "training.compile: false; compiling costs minutes at start, not measured yet")
    if caps.device in ("cuda", "xpu") and not caps.triton:
        raise ConfigError("training.compile: torch.compile needs Triton on a GPU; install it or set it to false.")
    return Choice("on", "training.compile: true")


# ------------------------------------------------------------------------------------------------- the run
_DETECTED: list[Capabilities] = []


def capabilities() -> Capabilities:
    """This machine's capabilities, detected once per process."""
    if not _DETECTED:
        _DETECTED.append(detect())
    return _DETECTED[0]


def for_config(config: Config, hidden_size: int | None = None, caps: Capabilities | None = None) -> FastPath:
    """The plan of `config` on this machine (the model's width read from its config where not given)."""
    if hidden_size is None and config.training.mixed_precision == "auto":
        hidden_size = model_hidden_size(config)
    return plan(config, caps or capabilities(), hidden_size)


def model_hidden_size(config: Config) -> int | None:
    """The hidden size of the model to train, from `model.tiny` or the model's config.json; None if unknown."""
    if config.model.name == "tiny":
        return config.model.tiny.hidden_size
    try:
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(
            config.model.name, revision=config.model.revision, trust_remote_code=config.model.trust_remote_code
        )
        return getattr(model_config.get_text_config(), "hidden_size", None)
    except (OSError, ValueError, KeyError):  # not readable here: the caller assumes a full-size model
        return None


def log_plan(path: FastPath) -> None:
    for what, choice in path.lines():
        logger.info("fast path: %s: %s", what, choice)


def training_device(path: FastPath) -> str:
    """Where this process trains: `cuda:<local rank>` on CUDA (one GPU per process), else the device type."""
    if path.device in ("cuda", "xpu"):
        return f"{path.device}:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return path.device
