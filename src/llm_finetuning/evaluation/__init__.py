"""Evaluation: tasks (perplexity, accuracy, exact match/F1, ROUGE/BLEU, judged), golden-set regression,
before/after reports and a bridge to lm-evaluation-harness.

Kept import-light (the config schema imports `evaluation.config`); import the modules you need.
"""

# The schema imports `evaluation.config`, which needs `config.base`: loading the config package first means
# either module can be imported first without a circular-import error.
import llm_finetuning.config  # noqa: F401
