"""Rewards for GRPO and PPO: verifiable answers, output format and LLM judges (see `registry`)."""
