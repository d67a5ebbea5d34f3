"""Evaluation: tasks (perplexity, accuracy, exact match/F1, ROUGE/BLEU, judged), golden-set regression,
before/after reports and a bridge to lm-evaluation-harness.

Kept import-light (the config schema imports `evaluation.config`); import the modules you need.
"""
