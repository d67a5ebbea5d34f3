"""PPO for language models (RLHF): our own trainer, since TRL no longer ships one.

Entry point: `PPOTrainer(policy, tokenizer, PPOOptions(...), reward_fn, ref_model=...)`, then `.train(prompts)`
and `.save(directory)`; `.save_checkpoint` / `.load_checkpoint` (or `write_checkpoint` for rotated, atomic
`checkpoint-N` folders) stop and continue a run exactly. The arithmetic lives in `core` as pure tensor functions.
"""

from __future__ import annotations

from llm_finetuning.methods.ppo.checkpoint import CheckpointMismatch, read_state, write_checkpoint
from llm_finetuning.methods.ppo.config import PPOOptions
from llm_finetuning.methods.ppo.reference import ReferencePolicy, frozen_copy
from llm_finetuning.methods.ppo.rewards import RewardFn, RewardModelScorer
from llm_finetuning.methods.ppo.rollout import Prompt, Rollout
from llm_finetuning.methods.ppo.trainer import PPOTrainer
from llm_finetuning.methods.ppo.value_head import PolicyWithValueHead, ValueHead, load_value_head, save_value_head

__all__ = [
    "CheckpointMismatch",
    "PPOOptions",
    "PPOTrainer",
    "PolicyWithValueHead",
    "Prompt",
    "ReferencePolicy",
    "RewardFn",
    "RewardModelScorer",
    "Rollout",
    "ValueHead",
    "frozen_copy",
    "load_value_head",
    "read_state",
    "save_value_head",
    "write_checkpoint",
]
