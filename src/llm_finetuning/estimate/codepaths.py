"""Which code paths a training run takes for a config on a device, as the toolkit decides them at run time: the
autocast precision, the LM head, per-example attention and Liger's kernels. The memory of a step depends on them.

The device decisions are the training path's own (`models/fast_path.py`, torch-free), asked for the device the
estimate describes (`capabilities`); what they mean for memory is modelled here, and each decision is recorded as a
note.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_finetuning import precision
from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError
from llm_finetuning.estimate.shapes import ModelShape
from llm_finetuning.models import fast_path
from llm_finetuning.models.fast_path import CPU_MATH_MAX_LENGTH, PER_EXAMPLE_SDPA

if TYPE_CHECKING:
    from llm_finetuning.estimate.gpus import GPU
    from llm_finetuning.estimate.plan import Notes

__all__ = ["CPU_MATH_MAX_LENGTH", "autocast", "capabilities", "liger", "lm_head", "per_example_attention"]
# Families whose MLP and norms Liger patches with the kernels the estimate models (RMSNorm, SwiGLU/GeGLU).
LIGER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")


def capabilities(device: str, gpu: GPU | None = None, cpu_bf16: bool | None = None) -> fast_path.Capabilities:
    """The device an estimate describes: a CUDA GPU of the table (a recent torch with its varlen kernel, Triton and
    Liger assumed installed; bf16 support taken as sm80+), or a CPU (this machine's bf16 flags unless told)."""
    if device == "cuda":
        bf16 = gpu is None or gpu.bf16
        return fast_path.Capabilities(
            device="cuda",
            name=gpu.name if gpu else "",
            compute_capability=(8, 0) if bf16 else (7, 5),
            bf16=bf16,
            triton=True,
            torch_varlen=True,
            flex_attention=True,
            liger=True,
        )
    native = precision.cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    return fast_path.Capabilities(device="cpu", bf16=native, torch_varlen=True, flex_attention=True)


def autocast(
    config: Config, shape: ModelShape, device: str, gpu: GPU | None, notes: Notes, cpu_bf16: bool | None
) -> str:
    """`training.mixed_precision` as the toolkit resolves it on `device`: `bf16`, `fp16` or `no`.

    On a CPU, `auto` follows `precision.cpu_autocast`; whether the CPU multiplies bf16 natively is `cpu_bf16`, or
    this machine's flags when None (the CPU estimate describes the machine it runs on unless told otherwise).
    """
    mixed = config.training.mixed_precision
    # The CPU's bf16 flags matter only to `auto` (not read otherwise: a described CPU may not be this one).
    caps = capabilities(device, gpu, cpu_bf16 if mixed == "auto" else False)
    try:
        resolved = fast_path.precision_choice(mixed, caps, shape.hidden_size).value
    except ConfigError:
        notes.warn("training.mixed_precision fp16: autocast in fp16 needs a CUDA GPU; training refuses it on CPU")
        return mixed
    if device == "cuda" or mixed != "auto":
        return resolved
    native, mixed = caps.bf16, resolved
    where = "this machine's CPU" if cpu_bf16 is None else "the CPU described"
    if not native:
        why = f"{where} has no native bf16 (AVX512-BF16 or AMX)"
    elif mixed == "no":
        why = f"hidden size {shape.hidden_size} < {precision.CPU_BF16_MIN_HIDDEN}, although {where} has native bf16"
    else:
        why = f"{where} has native bf16 and hidden size {shape.hidden_size} >= {precision.CPU_BF16_MIN_HIDDEN}"
    notes.info(f"training.mixed_precision auto on CPU: {'bf16 autocast' if mixed == 'bf16' else 'no autocast'} ({why})")
    return mixed


def lm_head(config: Config, shape: ModelShape, device: str, sharding: str, notes: Notes) -> str:
    """`plain` where SFT/pretraining/GRPO swap TRL's fused head for the toolkit's plain one (no Triton: CPU), else
    `fused` (TRL's chunked head)."""
    method = config.method.name
    if fast_path.lm_head_choice(capabilities(device, cpu_bf16=False)).value == "trl" or method not in (
        "sft",
        "pretrain",
        "grpo",
    ):
        return "fused"
    why = None
    if sharding != "none":
        why = "sharded models keep TRL's head"
    elif config.training.extra.get("cast_lm_head_to_fp32"):
        why = "training.extra.cast_lm_head_to_fp32 keeps TRL's head"
    elif not shape.plain_head:
        why = "this model soft-caps or scales its logits, which only TRL's head applies"
    if why:
        notes.info(f"LM head: TRL's fused head with its torch fallback on CPU ({why})")
        return "fused"
    if method == "grpo":
        labelled = "the completion positions"
    elif method == "sft" and not config.method.train_on_prompt:
        labelled = "every position (an upper bound: prompts carry no label unless method.train_on_prompt)"
    else:
        labelled = "every position"
    notes.info(
        f"LM head: the toolkit's plain head on CPU, float32 log-softmax over the labelled positions only; "
        f"assumed labelled: {labelled}"
    )
    return "plain"


def per_example_attention(config: Config, shape: ModelShape, device: str, notes: Notes) -> tuple[bool, bool]:
    """(padding-free or packed rows, sdpa per example) for SFT, as the fast path decides them on `device`."""
    method = config.method.name
    if method not in ("sft", "pretrain"):
        return False, False
    caps = capabilities(device, cpu_bf16=False)
    try:
        attention = fast_path.attention_choice(config, caps).value
    except ConfigError as exc:
        notes.warn(str(exc))
        return bool(config.data.packing), False
    # The toolkit's own kernels cut rows at example boundaries; models with sliding windows or soft-capping keep sdpa.
    own = attention in fast_path.ROW_ATTENTION and attention not in ("flash_attention_2", "flex_attention")
    if own and not shape.per_example_attention:
        attention = "sdpa"
    per_example = attention == PER_EXAMPLE_SDPA
    if config.data.packing:
        return True, per_example
    if fast_path.padding_free_choice(config, caps, fast_path.Choice(attention, "")).value != "on":
        return False, False
    if per_example:
        notes.info(
            "data.padding_free: each micro-batch assumed to be per_device_batch_size examples of data.max_length "
            "tokens end to end in one row (as many tokens as a padded batch at its worst), attended per example "
            "(sdpa on each example, key/value heads repeated)"
        )
        return True, True
    notes.info(f"data.padding_free: examples end to end in one row, one variable-length kernel call ({attention})")
    return True, False


def math_attention_length(config: Config, seq_len: int, device: str, per_example: bool, notes: Notes) -> int:
    """Tokens per example that sdpa's math kernel attends over on CPU (0: a fused kernel, no score matrix kept)."""
    if device != "cpu" or not per_example:
        return 0
    if seq_len <= CPU_MATH_MAX_LENGTH:
        notes.info(
            f"attention: examples of up to {CPU_MATH_MAX_LENGTH} tokens run sdpa's math kernel on CPU, which keeps "
            f"float32 copies of queries, keys, values and the scores ({seq_len} x {seq_len} per head and example)"
        )
        return seq_len
    if config.data.packing:
        # Packed rows are full whatever the examples' lengths, so short examples cost their scores on every token.
        notes.info(
            f"data.packing on CPU: packed examples assumed {CPU_MATH_MAX_LENGTH} tokens long, the worst case of "
            "sdpa's math kernel (shorter ones keep smaller score matrices, longer ones none)"
        )
        return CPU_MATH_MAX_LENGTH
    notes.info(
        f"attention: examples assumed {seq_len} tokens long (sdpa's flash kernel on CPU); examples of up to "
        f"{CPU_MATH_MAX_LENGTH} tokens use the math kernel, which keeps their scores but fills fewer tokens"
    )
    return 0


def liger(config: Config, shape: ModelShape, device: str, notes: Notes) -> bool:
    """Whether Liger's RMSNorm and SwiGLU kernels replace the model's (`training.liger_kernel`, CUDA only)."""
    if not config.training.liger_kernel:
        return False
    try:
        fast_path.liger_choice(config, capabilities(device, cpu_bf16=False))
    except ConfigError:
        notes.info("training.liger_kernel: Liger's kernels need a CUDA GPU; not applied in a CPU estimate")
        return False
    if shape.model_type not in LIGER_FAMILIES:
        notes.info(f"training.liger_kernel: savings not modelled for `{shape.model_type}` (counted as without it)")
        return False
    notes.info(
        "training.liger_kernel: RMSNorm keeps its input and a float32 1/rms per row (no float32 copy, no normalised "
        "value); the gated MLP keeps gate and up and recomputes the activation in the backward; RoPE keeps what "
        "transformers' does. Liger's in-place backward buffers are not modelled (an upper bound)"
    )
    return True
