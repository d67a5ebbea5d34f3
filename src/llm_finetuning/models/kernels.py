"""Liger's fused Triton kernels on the model to train (`training.liger_kernel`), on that model instance only.

Liger's `apply_liger_kernel_to_<model>(model=...)` patches the instance's norms and MLPs, but also rebinds names in
transformers' modelling modules (`LlamaRMSNorm`, `LlamaMLP`, `apply_rotary_pos_emb`, ...), which changes every model
of that architecture built later in the process (a reference model, an evaluation copy, the next benchmark). Here
the modules' namespaces and classes are restored right after the call; functions Liger swapped in at module level
(the rotary embedding) are then bound to the trained instance's own modules alone, by giving their `forward` a copy
of the module's globals with Liger's function in it.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError

logger = logging.getLogger(__name__)

# The layer kernels only. The loss stays the trainer's: TRL's SFT trainer runs its own chunked LM head, and the
# DPO/KTO/GRPO/PPO losses read the logits, which Liger's fused linear cross-entropy would never build.
LIGER_KERNELS: dict[str, bool] = {
    "rope": True,
    "rms_norm": True,
    "layer_norm": True,
    "swiglu": True,
    "geglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}
# Module namespaces Liger's patch functions write to.
PATCHED_PREFIXES = ("transformers.", "torch.nn.functional")


def check_liger(config: Config) -> None:
    """Refuse `training.liger_kernel` where it cannot run, before any data or model is loaded."""
    if not config.training.liger_kernel:
        return
    from llm_finetuning.models import fast_path

    fast_path.liger_choice(config, fast_path.capabilities())


def supported_model_types() -> set[str] | None:
    """The architectures (config `model_type`) Liger patches; None when this Liger version does not say."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def apply_liger(model: Any, config: Config) -> None:
    """Patch `model` (a PEFT wrapper or a plain model) in place with Liger's layer kernels, when configured."""
    if not config.training.liger_kernel:
        return
    check_liger(config)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    supported = supported_model_types()
    if supported is not None and model_type not in supported:
        raise ConfigError(
            f"training.liger_kernel: Liger has no kernels for `{model_type}` models (it patches "
            f"{', '.join(sorted(supported))}); set `training.liger_kernel: false`."
        )
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    # The modules this process trains, adapters included (PEFT's layers wrap the projections the kernels call).
    with InstanceOnly(base) as scope:
        _apply_liger_kernel_to_instance(model=base, **LIGER_KERNELS)
    applied = ", ".join(name for name, on in LIGER_KERNELS.items() if on)
    logger.info(
        "Liger kernels on the %s model: %s (the loss head stays the trainer's; %d module-level function(s) bound to "
        "this model only)",
        model_type,
        applied,
        scope.bound,
    )


class InstanceOnly:
    """Undo what a patch does to modules and classes on exit, keeping its module-level functions for `model` only."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.bound = 0
        self._modules: dict[str, dict[str, Any]] = {}
        self._classes: dict[type, dict[str, Any]] = {}

    def __enter__(self) -> InstanceOnly:
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(PATCHED_PREFIXES):
                continue
            namespace = dict(vars(module))
            self._modules[name] = namespace
            for value in namespace.values():
                if isinstance(value, type) and value.__module__ == name:
                    self._classes[value] = dict(vars(value))
        return self

    def __exit__(self, *exc: object) -> None:
        swapped: dict[str, dict[str, Any]] = {}  # module -> {global name: the patch's function}
        for name, before in self._modules.items():
            module = sys.modules.get(name)
            if module is None:
                continue
            now = vars(module)
            for key in [k for k in now if k not in before]:
                delattr(module, key)
            for key, value in before.items():
                if now.get(key) is not value:
                    patched = now.get(key)
                    if isinstance(patched, types.FunctionType) and isinstance(value, types.FunctionType):
                        swapped.setdefault(name, {})[key] = patched
                    setattr(module, key, value)
        for cls, before in self._classes.items():
            for key in [k for k in vars(cls) if k not in before]:
                delattr(cls, key)
            for key, value in before.items():
                if vars(cls).get(key) is not value:
                    setattr(cls, key, value)
        if exc[0] is None and swapped:
            self.bound = _bind_globals(self.model, swapped)


def _bind_globals(model: Any, swapped: dict[str, dict[str, Any]]) -> int:
    """Give every module of `model` whose forward reads a swapped global its own forward that sees the patch's one."""
    rebuilt: dict[Any, Any] = {}
    names: set[str] = set()
    for module in model.modules():
        forward = type(module).forward
        globals_of = getattr(forward, "__globals__", None)
        owner = getattr(forward, "__module__", None)
        replacements = swapped.get(owner or "")
        if not replacements or globals_of is None or "forward" in vars(module):
            continue  # not from a patched module, or already bound on the instance (Liger's own patches)
        used = {key: fn for key, fn in replacements.items() if key in forward.__code__.co_names}
        if not used:
            continue
        if hasattr(forward, "__wrapped__"):
            logger.warning("Liger: %s.forward is wrapped; %s left as transformers' own", type(module).__name__, used)
            continue
        if forward not in rebuilt:
            function = types.FunctionType(
                forward.__code__, {**globals_of, **used}, forward.__name__, forward.__defaults__, forward.__closure__
            )
            function.__kwdefaults__ = forward.__kwdefaults__
            function.__qualname__ = forward.__qualname__
            rebuilt[forward] = function
        module.forward = types.MethodType(rebuilt[forward], module)
        names.update(used)
    return len(names)
