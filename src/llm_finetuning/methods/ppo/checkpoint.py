"""PPO checkpoints: everything a stopped run needs to continue exactly where an uninterrupted one would be.

A checkpoint folder holds
- the policy's trainable weights as its `save_pretrained` writes them (`adapter_model.safetensors` +
  `adapter_config.json` for an adapter, `model.safetensors` (or shards) + `config.json` for full weights), so a
  checkpoint loads with plain PEFT/transformers like the other methods' checkpoints;
- `value_head.safetensors`;
- `optimizer.safetensors` (moments, step counts) with its hyper-parameters in the state file;
- `rng_state.safetensors`: torch's CPU (and CUDA/MPS) generators, the mini-batch order and prompt order ones;
- `trainer_state.json`, written last: step counter, options, prompt position, adaptive-KL coefficient, any
  scheduler state, Python/NumPy generator states, the per-step statistics so far, and the caller's `extra`.

No pickle anywhere. `write_checkpoint` builds the folder under a hidden temporary name and renames it to
`checkpoint-N` only when complete, so a process killed mid-save leaves no `checkpoint-N` behind (and
`RunDir.last_checkpoint` skips any `checkpoint-N` folder without a readable `trainer_state.json`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import Tensor

from llm_finetuning.errors import UserError
from llm_finetuning.methods.ppo.state import optimizer_state, optimizer_state_from_parts, restore_rng, rng_state
from llm_finetuning.methods.ppo.value_head import load_value_head, save_value_head

if TYPE_CHECKING:
    from llm_finetuning.methods.ppo.trainer import PPOTrainer

logger = logging.getLogger(__name__)

FORMAT = "llmft-ppo-checkpoint"
VERSION = 1
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
FULL_FILE = "model.safetensors"
FULL_INDEX = "model.safetensors.index.json"
NAME = re.compile(r"checkpoint-(\d+)")
# Options that may change between the interrupted and the resumed run: `total_steps` only extends or shortens it.
RESUMABLE_CHANGES = frozenset({"total_steps"})


class CheckpointMismatch(UserError):
    """The checkpoint was written by a run that differs from this one in ways that change the training."""

    def __init__(self, directory: Path, differences: dict[str, tuple[Any, Any]]) -> None:
        self.directory = directory
        self.differences = differences
        listed = "; ".join(f"{key}: {old!r} in the checkpoint, {new!r} now" for key, (old, new) in differences.items())
        super().__init__(
            f"Cannot resume from {directory}: it was written with different settings ({listed}). Resume with the "
            "settings of the interrupted run, or start a new run (--overwrite)."
        )


def differences(saved: Any, current: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two JSON-like trees, with (saved, current) values."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(saved) | set(current), key=str):
            found.update(differences(saved.get(key), current.get(key), f"{prefix}{key}."))
        return found
    return {} if saved == current else {prefix.rstrip("."): (saved, current)}


# ------------------------------------------------------------------------------------------------- saving
def save_checkpoint(trainer: PPOTrainer, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `trainer`'s complete state into `directory` (created; the state file last)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    policy = trainer.policy
    if isinstance(policy, PeftModel):
        # The raw adapter (no PiSSA/OLoRA conversion): the weights that continue training.
        policy.save_pretrained(directory)
    else:
        # In-memory parameter names (no conversion to a hub layout), so they load back name for name.
        policy.save_pretrained(directory, save_original_format=False)
    save_value_head(trainer.model.value_head, directory)
    optimizer_meta, optimizer_tensors = optimizer_state(trainer.optimizer.state_dict())
    save_file(optimizer_tensors, str(directory / OPTIMIZER_FILE))
    rng_meta, rng_tensors = rng_state()
    order_meta, order_tensors = trainer.prompt_order.state_dict()
    generators = {
        **{f"global.{name}": tensor for name, tensor in rng_tensors.items()},
        **{f"prompt_order.{name}": tensor for name, tensor in order_tensors.items()},
        "batch_order": trainer.batch_order.get_state(),
    }
    save_file(generators, str(directory / RNG_FILE))
    state = {
        "format": FORMAT,
        "version": VERSION,
        "global_step": trainer.global_step,
        "options": trainer.options.model_dump(mode="json"),
        "trainable": _trainable_shapes(trainer),
        "kl_coef": trainer.kl_controller.value,
        "prompt_order": order_meta,
        "optimizer": optimizer_meta,
        "lr_scheduler": trainer.lr_scheduler.state_dict() if trainer.lr_scheduler is not None else None,
        "rng": rng_meta,
        "history": trainer.history,
        "extra": extra or {},
    }
    try:
        text = json.dumps(state, indent=1)
    except TypeError as exc:  # e.g. a scheduler whose state holds a callable object
        raise ValueError(f"the PPO trainer's state cannot be written as JSON ({exc})") from None
    (directory / STATE_FILE).write_text(text, encoding="utf-8")
    return directory


def write_checkpoint(
    trainer: PPOTrainer, checkpoints: str | Path, keep: int | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Save `checkpoints/checkpoint-<step>` atomically (built under a temporary name, then renamed) and delete
    all but the newest `keep` checkpoints (all are kept when `keep` is None)."""
    checkpoints = Path(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    for leftover in checkpoints.glob(".checkpoint-*.partial"):  # from a process killed while saving
        shutil.rmtree(leftover)
    target = checkpoints / f"checkpoint-{trainer.global_step}"
    partial = checkpoints / f".{target.name}.partial"
    save_checkpoint(trainer, partial, extra)
    if target.exists():  # a stale one of the same step, e.g. from a run resumed from an earlier checkpoint
        shutil.rmtree(target)
    os.replace(partial, target)
    logger.info("Saved PPO checkpoint %s", target)
    if keep is not None:
        done = sorted((p for p in checkpoints.iterdir() if NAME.fullmatch(p.name)), key=_step_of)
        for old in [p for p in done if p != target][: max(0, len(done) - keep)]:
            shutil.rmtree(old)
            logger.info("Deleted old checkpoint %s (keeping the newest %d)", old, keep)
    return target


# ------------------------------------------------------------------------------------------------ loading
def read_state(directory: str | Path) -> dict[str, Any]:
    """The state file of a PPO checkpoint, or a `UserError` saying why it is not one."""
    path = Path(directory) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot resume from {directory}: {path.name} is missing or unreadable ({exc}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"Cannot resume from {directory}: it is not a PPO checkpoint (the run was not trained with method: ppo)."
        )
    if state.get("version") != VERSION:
        raise UserError(
            f"Cannot resume from {directory}: PPO checkpoint version {state.get('version')} is not supported "
            f"(this version reads {VERSION})."
        )
    return state


def load_checkpoint(trainer: PPOTrainer, directory: str | Path, dataset_size: int | None = None) -> dict[str, Any]:
    """Restore `trainer` from a checkpoint written by `save_checkpoint`; returns the `extra` saved with it.

    Refused with `CheckpointMismatch` (before anything is changed) when the options (other than `total_steps`),
    the trainable parameters (names and shapes), the number of prompts (`dataset_size`) or the use of a
    learning-rate scheduler differ.
    """
    directory = Path(directory)
    state = read_state(directory)
    saved_options = {k: v for k, v in state["options"].items() if k not in RESUMABLE_CHANGES}
    options = {k: v for k, v in trainer.options.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}
    found = differences(saved_options, options)
    shapes = _trainable_shapes(trainer)
    if state["trainable"] != shapes:
        found["trainable parameters"] = (_summary(state["trainable"]), _summary(shapes))
    if dataset_size is not None and state["prompt_order"]["size"] not in (None, dataset_size):
        found["prompts"] = (state["prompt_order"]["size"], dataset_size)
    if (state["lr_scheduler"] is None) != (trainer.lr_scheduler is None):
        found["lr_scheduler"] = tuple(
            "none" if s is None else "used" for s in (state["lr_scheduler"], trainer.lr_scheduler)
        )
    if found:
        raise CheckpointMismatch(directory, found)

    _load_policy(trainer, directory)
    trainer.model.value_head.load_state_dict(load_value_head(directory).state_dict())
    optimizer_tensors = load_file(str(directory / OPTIMIZER_FILE))
    live = trainer.optimizer.state_dict()
    trainer.optimizer.load_state_dict(optimizer_state_from_parts(state["optimizer"], optimizer_tensors, live))
    if trainer.lr_scheduler is not None:
        trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    trainer.kl_controller.value = state["kl_coef"]
    trainer.global_step = state["global_step"]
    trainer.history = list(state["history"])
    generators = load_file(str(directory / RNG_FILE))
    trainer.batch_order.set_state(generators["batch_order"])
    trainer.prompt_order.load_state_dict(state["prompt_order"], _prefixed(generators, "prompt_order."))
    restore_rng(state["rng"], _prefixed(generators, "global."))
    logger.info("Resumed PPO from %s at step %d", directory, trainer.global_step)
    return state["extra"]


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("checkpoint-"))


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {name[len(prefix) :]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def _summary(shapes: dict[str, list[int]]) -> str:
    return f"{len(shapes)} tensors, {sum(math.prod(shape) for shape in shapes.values())} values"


def _trainable_shapes(trainer: PPOTrainer) -> dict[str, list[int]]:
    return {name: list(p.shape) for name, p in trainer.policy.named_parameters() if p.requires_grad}


def _load_policy(trainer: PPOTrainer, directory: Path) -> None:
    """Load the saved weights into the live policy and check that every trainable parameter got its value."""
    policy = trainer.policy
    if isinstance(policy, PeftModel):
        result = set_peft_model_state_dict(policy, load_file(str(directory / ADAPTER_FILE)), policy.active_adapter)
    else:
        result = policy.load_state_dict(_full_weights(directory), strict=False)
    missing = set(result.missing_keys)
    not_restored = [name for name in _trainable_shapes(trainer) if name in missing]
    if not_restored or result.unexpected_keys:
        raise UserError(
            f"Cannot resume from {directory}: its weights do not fit this policy (not restored: {not_restored[:3]}, "
            f"unexpected: {list(result.unexpected_keys)[:3]})."
        )


def _full_weights(directory: Path) -> dict[str, Tensor]:
    """A full model's weights, from one safetensors file or the shards its index lists."""
    index = directory / FULL_INDEX
    if not index.is_file():
        return load_file(str(directory / FULL_FILE))
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    return {name: tensor for shard in shards for name, tensor in load_file(str(directory / shard)).items()}
