"""Inference from a run directory: batched generation, chat (and later an OpenAI-compatible server)."""
