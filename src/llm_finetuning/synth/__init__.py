"""Data from teacher models: self-instruct, Evol-Instruct, distillation with rejection sampling, multi-turn
conversations and Constitutional-AI revisions (`llmft data generate CONFIG`)."""

from llm_finetuning.synth.config import GenerateConfig
from llm_finetuning.synth.run import GenerateResult, generate_data, load_generate_config

__all__ = ["GenerateConfig", "GenerateResult", "generate_data", "load_generate_config"]
