"""Per-example attention on packed rows: the padded loss and gradients, without a mask over the whole row."""

from __future__ import annotations

import copy

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.models import varlen_attention
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.models.varlen_attention import NAME, segment_lengths, use_varlen_attention

pytestmark = pytest.mark.unit

ROWS = [{"input_ids": list(range(3, 3 + n)), "labels": list(range(40, 40 + n))} for n in (5, 9, 3)]


@pytest.fixture
def models():
    """The same tiny grouped-query model twice: plain sdpa, and switched to the per-example path."""
    sdpa = build_model(TinyModelConfig(hidden_size=32, num_heads=4, num_kv_heads=2, seed=3), build_tokenizer())
    sdpa.config.use_cache = False  # training: a cache would hide the packed boundaries from sdpa's mask
    varlen = copy.deepcopy(sdpa)
    assert use_varlen_attention(varlen)
    assert varlen.config._attn_implementation == NAME and sdpa.config._attn_implementation == "sdpa"
    return sdpa, varlen


def collate(padding_free: bool) -> dict:
    return DataCollatorForLanguageModeling(pad_token_id=1, padding_free=padding_free)(ROWS)


def test_segments_come_from_the_collator_bounds_or_restarting_positions():
    assert segment_lengths({"cu_seq_lens_q": torch.tensor([0, 5, 14, 17])}, 17) == [5, 9, 3]
    assert segment_lengths({"position_ids": torch.tensor([[0, 1, 2, 0, 1, 0]])}, 6) == [3, 2, 1]
    assert segment_lengths({"position_ids": torch.arange(6)[None]}, 6) is None  # one sequence
    assert segment_lengths({}, 6) is None


def test_packed_row_gives_the_padded_loss_and_gradients(models):
    sdpa, varlen = models
    padded = sdpa(**collate(padding_free=False)).loss
    packed = collate(padding_free=True)
    assert packed["input_ids"].shape == (1, 17) and "attention_mask" not in packed
    packed_loss = varlen(**packed).loss
    assert packed_loss.item() == pytest.approx(padded.item(), rel=1e-6)
    padded.backward()
    packed_loss.backward()
    for a, b in zip(sdpa.parameters(), varlen.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_each_example_of_a_row_sees_only_itself(models):
    _, varlen = models
    packed = collate(padding_free=True)
    packed.pop("cu_seq_lens_q")
    packed.pop("cu_seq_lens_k")  # boundaries from the positions alone
    with torch.no_grad():
        together = varlen(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        start = 0
        for row in ROWS:
            n = len(row["input_ids"])
            alone = varlen(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            torch.testing.assert_close(together[start : start + n], alone, rtol=1e-5, atol=1e-5)
            start += n


def test_padded_batches_and_generation_take_the_sdpa_path(models):
    sdpa, varlen = models
    padded = collate(padding_free=False)
    with torch.no_grad():
        torch.testing.assert_close(varlen(**padded).logits, sdpa(**padded).logits)
        prompt = torch.tensor([[5, 6, 7]])
        settings = {"max_new_tokens": 4, "do_sample": False, "use_cache": True}
        assert torch.equal(varlen.generate(prompt, **settings), sdpa.generate(prompt, **settings))


def test_models_it_cannot_reproduce_keep_their_attention(monkeypatch):
    tokenizer = build_tokenizer()
    eager = build_model(TinyModelConfig(hidden_size=32, num_heads=4), tokenizer, attn_implementation="eager")
    assert not use_varlen_attention(eager) and eager.config._attn_implementation == "eager"
    windowed = build_model(TinyModelConfig(architecture="qwen2", hidden_size=32, num_heads=4), tokenizer)
    windowed.config.use_sliding_window, windowed.config.sliding_window = True, 4
    assert not use_varlen_attention(windowed)
    # if the switched model failed the isolation check, it would go back to sdpa
    monkeypatch.setattr("llm_finetuning.models.packing.packed_attention_is_isolated", lambda model: False)
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=4), tokenizer)
    assert not use_varlen_attention(model) and model.config._attn_implementation == "sdpa"
    assert varlen_attention.supports_varlen(model)
