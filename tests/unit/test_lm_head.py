"""The plain SFT loss head: the same loss, log-probabilities, metrics and gradients as TRL's fused head."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl.trainer.utils import add_fused_lm_head

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.models.lm_head import _plain_head_forward, use_plain_lm_head
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.unit
OUTPUTS = ("log_probs", "entropy", "is_top1")


def make_pair(temperature: float = 1.0, entropy_grad: bool = False):
    """Two copies of one tiny model, both with TRL's fused head; the second then gets the plain head."""
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=4, num_kv_heads=2, seed=5), build_tokenizer())
    trl_model, plain_model = model, copy.deepcopy(model)
    for m in (trl_model, plain_model):
        add_fused_lm_head(m, temperature=temperature, outputs=OUTPUTS)
    forward = _plain_head_forward(plain_model.forward, temperature, entropy_grad)
    plain_model.forward = types.MethodType(forward, plain_model)
    return trl_model, plain_model


@pytest.fixture
def pair():
    return make_pair()


def batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 14), generator=generator)
    labels = ids.clone()
    labels[:, :6] = -100  # prompts
    labels[2, :11] = -100  # a short completion
    return ids, labels


def test_plain_head_gives_trl_loss_fields_and_gradients(pair):
    trl_model, plain_model = pair
    ids, labels = batch(trl_model.config.vocab_size)
    outputs = []
    for model in pair:
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        outputs.append(out)
    expected, got = outputs
    # the loss is the mean negative log-likelihood of the completion tokens only
    manual = torch.nn.functional.cross_entropy(
        trl_model(input_ids=ids).logits[:, :-1].reshape(-1, trl_model.config.vocab_size), labels[:, 1:].reshape(-1)
    )
    assert got.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert torch.equal(got.label_mask, labels[:, 1:] != -100)
    for field in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(got, field), getattr(expected, field), rtol=1e-5, atol=1e-5)
        assert (getattr(got, field)[~got.label_mask] == 0).all()  # zero where there is no label, as TRL's
    assert torch.equal(got.is_top1.bool(), expected.is_top1.bool())
    for a, b in zip(trl_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_tempered_head_with_entropy_in_the_loss_matches_trl():
    """GRPO: logits divided by the sampling temperature, and an entropy term that carries gradients."""
    trl_model, plain_model = pair = make_pair(temperature=0.7, entropy_grad=True)
    ids, labels = batch(trl_model.config.vocab_size)
    outputs = []
    for model in pair:
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        (out.loss - 0.1 * out.entropy.sum()).backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1].log_probs, outputs[0].log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1].entropy, outputs[0].entropy, rtol=1e-5, atol=1e-5)
    for a, b in zip(trl_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_plain_head_divides_by_the_tokens_of_the_whole_accumulated_batch(pair):
    _, plain_model = pair
    ids, labels = batch(plain_model.config.vocab_size)
    own = plain_model(input_ids=ids, labels=labels, fused_lm_head=True)
    shared = plain_model(input_ids=ids, labels=labels, fused_lm_head=True, num_items_in_batch=100)
    assert shared.loss.item() == pytest.approx(own.loss.item() * own.label_mask.sum().item() / 100, rel=1e-5)


def test_calls_without_the_fused_flag_are_untouched(pair):
    trl_model, plain_model = pair
    ids, labels = batch(trl_model.config.vocab_size)
    assert torch.equal(trl_model(input_ids=ids).logits, plain_model(input_ids=ids).logits)
    assert trl_model(input_ids=ids, labels=labels).loss.item() == plain_model(input_ids=ids, labels=labels).loss.item()


class FakeTrainer:
    def __init__(self, model):
        self.model = model


def test_installed_on_cpu_under_peft_and_not_for_models_that_transform_logits():
    tokenizer = build_tokenizer()
    base = build_model(TinyModelConfig(hidden_size=32, num_heads=4), tokenizer)
    add_fused_lm_head(base, outputs=OUTPUTS)
    before = base.forward
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    assert use_plain_lm_head(FakeTrainer(wrapped))  # CPU: TRL has no Triton kernel here
    assert base.forward is not before
    ids, labels = batch(base.config.vocab_size)
    out = wrapped(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    assert all(p.grad is not None for n, p in wrapped.named_parameters() if "lora_" in n)

    capped = build_model(TinyModelConfig(hidden_size=32, num_heads=4), tokenizer)
    capped.config.final_logit_softcapping = 30.0
    add_fused_lm_head(capped, outputs=OUTPUTS)
    assert not use_plain_lm_head(FakeTrainer(capped))
