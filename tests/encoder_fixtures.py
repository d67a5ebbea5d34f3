"""Tiny encoder models saved in the layouts sentence-transformers loads: a bi-encoder (`SentenceTransformer(path)`)
and a cross-encoder (`CrossEncoder(path)`), randomly initialised, built in well under a second."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from llm_finetuning.models.tiny import build_tokenizer


def tiny_encoder_dir(path: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """A BERT-shaped encoder with the project's byte-level tokenizer, saved as a plain transformers model."""
    tokenizer = build_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_sentence_transformer(path: Path, pooling: str = "mean", seed: int = 0) -> Path:
    """A saved `SentenceTransformer` (encoder + pooling) at `path`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    encoder = tiny_encoder_dir(path.parent / f"{path.name}-encoder", seed=seed)
    transformer = Transformer(str(encoder), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling)])
    model.save_pretrained(str(path))
    return path


def tiny_cross_encoder(path: Path, seed: int = 0) -> Path:
    """A saved `CrossEncoder` with one output (a relevance score) at `path`."""
    from sentence_transformers import CrossEncoder

    encoder = tiny_encoder_dir(path.parent / f"{path.name}-encoder", seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CrossEncoder(str(encoder), num_labels=1, max_length=128)
    model.save_pretrained(str(path))
    return path


def fake_encoder_run(run: Path, method: str, seed: int = 0) -> Path:
    """A run directory as the `embedding` or `reranker` method leaves it: the model in `RUN/final/`, beside the
    `llmft_config.yaml` that names the method. Returns the run directory."""
    import yaml

    final = run / "final"
    (tiny_sentence_transformer if method == "embedding" else tiny_cross_encoder)(final, seed=seed)
    config = {"method": {"name": method}, "model": {"name": "tiny"}}
    (final / "llmft_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return run


def tiny_modernbert_dir(path: Path, seed: int = 0) -> Path:
    """A ModernBERT-shaped encoder (alternating local/global attention, gated MLP) with the byte-level tokenizer."""
    from transformers import ModernBertConfig, ModernBertModel

    tokenizer = build_tokenizer()
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        local_attention=16,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        cls_token_id=tokenizer.eos_token_id,
        sep_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ModernBertModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
