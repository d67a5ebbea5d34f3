"""PPO's options live with the config schema (so the schema imports no trainer code); re-exported here."""

from llm_finetuning.config.ppo import PPOOptions

__all__ = ["PPOOptions"]
