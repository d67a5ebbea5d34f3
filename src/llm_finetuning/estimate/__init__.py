"""`llmft estimate`: peak memory per device, time and cost of a training config, from the model's config.json.

Nothing is loaded but the model's `config.json`, so a 70B model is estimated on any machine in milliseconds.
The method, formulas and the comparison with measured memory are in docs/estimate.md.
"""

from llm_finetuning.estimate.core import DEFAULT_UTILIZATION, Estimate, GPURow, count_examples, estimate
from llm_finetuning.estimate.gpus import GPU, find_gpu, load_table
from llm_finetuning.estimate.memory import Breakdown
from llm_finetuning.estimate.shapes import ModelShape, shape_from_config

__all__ = [
    "DEFAULT_UTILIZATION",
    "GPU",
    "Breakdown",
    "Estimate",
    "GPURow",
    "ModelShape",
    "count_examples",
    "estimate",
    "find_gpu",
    "load_table",
    "shape_from_config",
]
