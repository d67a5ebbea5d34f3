"""Packing: examples share a row but never attend to each other, so the loss is the unpacked loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.data.tokenize import encode
from llm_finetuning.errors import ConfigError
from llm_finetuning.models.packing import check_packing, packed_attention_is_isolated
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.unit

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Teal."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Four, since two and two make four."}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
]


@pytest.fixture
def setup():
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=4, num_kv_heads=2, seed=3), tokenizer).eval()
    examples = [encode(tokenizer, c) for c in CONVERSATIONS]
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    return tokenizer, model, rows


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(setup, attention):
    tokenizer, model, rows = setup
    model.set_attn_implementation(attention)
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed  # one row, no padding
    with torch.no_grad():
        unpacked = model(**padded, use_cache=False)
        packed_out = model(**packed, use_cache=False)
    torch.testing.assert_close(packed_out.loss, unpacked.loss, rtol=1e-5, atol=1e-6)
    # Stronger than the loss: every example's logits in the packed row equal its logits alone.
    start = 0
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        torch.testing.assert_close(
            packed_out.logits[0, start : start + length], unpacked.logits[index, :length], rtol=1e-4, atol=1e-5
        )
        start += length


def test_packed_loss_differs_when_examples_attend_to_each_other(setup):
    """The same packed row without restarted positions is one long sequence: the check above has teeth."""
    tokenizer, model, rows = setup
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    first = len(rows[0]["input_ids"])
    second = len(rows[1]["input_ids"])
    with torch.no_grad():
        alone = model(**padded, use_cache=False).logits[1, :second]
        joined = model(input_ids=packed["input_ids"], use_cache=False).logits[0, first : first + second]
    assert (joined - alone).abs().max() > 1e-3


def test_isolation_check_passes_for_real_attention(setup):
    _, model, _ = setup
    for attention in ("sdpa", "eager"):
        model.set_attn_implementation(attention)
        assert packed_attention_is_isolated(model)
    assert not model.training  # the probe restores the mode it found


class LeakyModel(nn.Module):
    """Logits depend on every earlier token, whatever the positions say: packed examples would leak."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 8)
        self.config = type("Config", (), {"_attn_implementation": "leaky"})()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids, position_ids=None, use_cache=False):
        return type("Output", (), {"logits": self.embed(input_ids).cumsum(dim=1)})()


def test_packing_is_refused_when_attention_leaks_across_examples():
    with pytest.raises(ConfigError, match="lets packed examples attend to each other.*attn_implementation"):
        check_packing(LeakyModel())
    # Unsloth chooses its own kernels: the only fix offered is turning packing off.
    with pytest.raises(ConfigError, match="attend to each other. Set `data.packing: false`") as refused:
        check_packing(LeakyModel(), backend="unsloth")
    assert "attn_implementation" not in str(refused.value)
