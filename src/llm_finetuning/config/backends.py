"""What each `model.backend` other than transformers can and cannot do with a config."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_finetuning.config.schema import Config

UNSLOTH_ADAPTERS = ("lora", "dora")
UNSLOTH_METHODS = ("sft", "pretrain")
UNSLOTH_INITS = ("default", "gaussian")
UNSLOTH_SAVED_MODULES = ("lm_head", "embed_tokens")
UNSLOTH_METHOD_REASONS = {
    "reward": "a reward model needs a sequence-classification head, which Unsloth's causal-LM loader does not build",
    "ppo": "the PPO trainer is the toolkit's own, with a value head Unsloth does not patch",
}
"""Why the other methods are refused, where there is more to say than that they were not validated with Unsloth."""


def unsloth_refusal(config: Config) -> str | None:
    """What `model.backend: unsloth` cannot do with this config (completing "`model.backend: unsloth` ..."), or None.

    The adapter is attached by Unsloth's `get_peft_model`, which makes LoRA (DoRA through PEFT) and nothing else; the
    methods are those whose trainer runs the model as SFT does (DPO, ORPO, KTO and GRPO would need Unsloth's patched
    TRL trainers, which this integration does not use).
    """
    model, adapter, method = config.model, config.adapter, config.method.name
    fallback = "or set `model.backend: transformers`"
    if model.name == "tiny":
        return (
            "loads pretrained checkpoints, not the `tiny` model built in this process. Save a model and set "
            f"`model.name` to its directory, {fallback}"
        )
    if adapter.method not in UNSLOTH_ADAPTERS:
        return (
            f"attaches LoRA and DoRA adapters only (QLoRA with `model.quantization: nf4` or `int8`), not "
            f"`adapter.method: {adapter.method}`. Use `adapter.method: lora`, {fallback}"
        )
    if adapter.init not in UNSLOTH_INITS:
        return (
            f"initialises adapters as `default` or `gaussian` (in every Unsloth version the extra accepts), not "
            f"`adapter.init: {adapter.init}`. Choose one of those, {fallback}"
        )
    targets = adapter.target_modules if isinstance(adapter.target_modules, list) else []
    embeddings = [name for name in targets if name in UNSLOTH_SAVED_MODULES]
    if embeddings:
        return (
            f"treats `adapter.target_modules` {', '.join(embeddings)} differently across versions (a LoRA, or the "
            f"whole matrix trained). List them in `adapter.modules_to_save` to train them in full, {fallback}"
        )
    others = [name for name in adapter.modules_to_save if name not in UNSLOTH_SAVED_MODULES]
    if others:
        return (
            f"trains only `lm_head` and `embed_tokens` in full, not `adapter.modules_to_save` {', '.join(others)}. "
            f"Remove them, {fallback}"
        )
    if method not in UNSLOTH_METHODS:
        reason = UNSLOTH_METHOD_REASONS.get(method, "this integration runs the model through TRL's SFT trainer only")
        return f"trains `method.name: sft` and `pretrain`, not `{method}`: {reason}. Set `model.backend: transformers`"
    if model.quantization == "fp4":
        return f"quantizes 4-bit weights as nf4 only, not `model.quantization: fp4`. Set `nf4`, {fallback}"
    if model.quantization == "nf4" and not model.double_quantization:
        return (
            "always double-quantizes 4-bit weights, so `model.double_quantization: false` would be ignored. Remove it, "
            + fallback
        )
    if model.attn_implementation != "auto":
        return (
            f"chooses its own attention kernels and would ignore `model.attn_implementation: "
            f"{model.attn_implementation}`. Leave it at `auto`, {fallback}"
        )
    return None
