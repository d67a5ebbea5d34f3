"""PPO building blocks around the arithmetic: value head, reference, prompts, reward model, options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForSequenceClassification

from llm_finetuning.config.adapters import LoraAdapter
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.methods.ppo import (
    PolicyWithValueHead,
    PPOOptions,
    PPOTrainer,
    ReferencePolicy,
    RewardModelScorer,
    ValueHead,
    frozen_copy,
    load_value_head,
    save_value_head,
)
from llm_finetuning.methods.ppo.rewards import check_scores
from llm_finetuning.methods.ppo.rollout import encode_prompts
from llm_finetuning.models.adapters import apply_adapter
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.unit

SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def model(tokenizer):
    return build_model(SHAPE, tokenizer).eval()


def lora(model):
    return apply_adapter(model, LoraAdapter(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))


def batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    _, ids, mask = encode_prompts(texts, tokenizer, None)
    return ids, mask


# ----------------------------------------------------------------------------------------- value head
def test_value_head_save_load_round_trip(tmp_path: Path, model, tokenizer) -> None:
    wrapped = PolicyWithValueHead(model)
    with torch.no_grad():
        wrapped.value_head.summary.weight.normal_()
        wrapped.value_head.summary.bias.fill_(0.25)
    path = wrapped.save(tmp_path)
    assert path == tmp_path / "value_head.safetensors"
    loaded = load_value_head(tmp_path)
    for name, tensor in wrapped.value_head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids, mask = batch(tokenizer, ["hello there", "hi"])
    _, before = wrapped(ids, mask)
    _, after = PolicyWithValueHead(model, loaded)(ids, mask)
    torch.testing.assert_close(after, before)


def test_value_head_of_another_width_is_refused(tmp_path: Path, model) -> None:
    save_value_head(ValueHead(16), tmp_path)
    with pytest.raises(ValueError, match="hidden size is 32"):
        PolicyWithValueHead(model, load_value_head(tmp_path))


def test_new_value_head_predicts_zero_and_reads_the_last_hidden_state(model, tokenizer) -> None:
    wrapped = PolicyWithValueHead(model)
    ids, mask = batch(tokenizer, ["hello there", "hi"])
    logits, values = wrapped(ids, mask)
    assert values.shape == ids.shape and torch.all(values == 0)
    with torch.no_grad():
        wrapped.value_head.summary.weight.normal_()
    logits, values = wrapped(ids, mask, logits_to_keep=3)
    assert logits.shape == (2, 3, len(tokenizer))
    output = model(
        input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_hidden_states=True
    )
    torch.testing.assert_close(values, wrapped.value_head(output.hidden_states[-1]))
    torch.testing.assert_close(logits, output.logits[:, -3:])


def test_left_padding_does_not_change_logits_or_values(model, tokenizer) -> None:
    """Positions count real tokens only, so a padded prompt is scored as it would be alone (and as generated)."""
    wrapped = PolicyWithValueHead(model)
    with torch.no_grad():
        wrapped.value_head.summary.weight.normal_()
    alone_ids, alone_mask = batch(tokenizer, ["hi you"])
    padded_ids, padded_mask = batch(tokenizer, ["hi you", "a much longer prompt than that"])
    assert padded_mask[0, 0] == 0  # the short prompt really is left-padded
    width = alone_ids.shape[1]
    alone_logits, alone_values = wrapped(alone_ids, alone_mask)
    padded_logits, padded_values = wrapped(padded_ids, padded_mask)
    torch.testing.assert_close(padded_logits[0, -width:], alone_logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded_values[0, -width:], alone_values[0], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ reference
def test_lora_reference_is_the_base_model_with_the_adapter_off(model, tokenizer) -> None:
    ids, mask = batch(tokenizer, ["hello there", "hi"])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        base_logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    policy = lora(model)
    with torch.no_grad():  # move the adapter away from its no-op start
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    reference = ReferencePolicy(policy)
    assert reference.shares_policy and reference.ref_model is None
    torch.testing.assert_close(reference.logits(ids, mask), base_logits)
    with torch.no_grad():
        adapted = policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert not torch.allclose(adapted, base_logits)


def test_full_policy_needs_a_reference_model(model) -> None:
    with pytest.raises(ValueError, match="frozen_copy"):
        ReferencePolicy(model)
    reference = ReferencePolicy(model, frozen_copy(model))
    assert not reference.shares_policy
    assert not any(p.requires_grad for p in reference.ref_model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the copy is frozen, the policy is not


# ------------------------------------------------------------------------------------------- prompts
def test_prompts_are_left_padded_rendered_and_cut_from_the_left(tokenizer) -> None:
    chat = [{"role": "user", "content": "hi"}]
    texts, ids, mask = encode_prompts(["abc", chat], tokenizer, None)
    assert texts == ["abc", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    assert mask[0].tolist() == [0] * (ids.shape[1] - 3) + [1, 1, 1]
    assert tokenizer.decode(ids[0, -3:]) == "abc"
    assert ids[0, 0] == tokenizer.pad_token_id
    _, cut, cut_mask = encode_prompts(["abcdef"], tokenizer, 4)
    assert tokenizer.decode(cut[0]) == "cdef" and cut_mask.all()


# ------------------------------------------------------------------------------------------- rewards
def test_reward_model_scorer_scores_prompt_plus_completion(tokenizer) -> None:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    reward_model = LlamaForSequenceClassification(config)
    scorer = RewardModelScorer(reward_model, tokenizer, batch_size=2)
    prompts = ["Q: 1+1? A:", "Q: name? A:", "Q: x"]
    completions = [" 2", " Bob the builder", ""]
    scores = scorer(prompts, completions)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    for prompt, completion, score in zip(prompts, completions, scores, strict=True):
        ids = tokenizer(prompt + completion, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            alone = reward_model(**ids).logits[0, 0].item()
        assert score == pytest.approx(alone, abs=1e-5)
    config.num_labels = 2
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelScorer(LlamaForSequenceClassification(config), tokenizer)


def test_reward_function_output_is_checked() -> None:
    assert check_scores([1, 0.5], 2) == [1.0, 0.5]
    with pytest.raises(ValueError, match="1 scores for 2"):
        check_scores([1.0], 2)
    with pytest.raises(ValueError, match="non-finite"):
        check_scores([1.0, float("nan")], 2)


# ---------------------------------------------------------------------------------- options, trainer
def test_every_option_is_described_and_mini_batches_must_divide_the_rollout() -> None:
    for name, field in PPOOptions.model_fields.items():
        assert field.description, name
    assert PPOOptions(batch_size=6, num_generations=4, mini_batch_size=8).mini_batch_size == 8
    with pytest.raises(ValidationError, match="must divide"):
        PPOOptions(batch_size=6, num_generations=1, mini_batch_size=4)
    with pytest.raises(ValidationError, match="extra"):
        PPOOptions(clip_rnage=0.1)


def test_a_callers_optimizer_must_train_the_value_head(model, tokenizer) -> None:
    policy = lora(model)
    options = PPOOptions(batch_size=2, mini_batch_size=2)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="value head"):
        PPOTrainer(policy, tokenizer, options, lambda p, c, **k: [0.0] * len(c), optimizer=optimizer)
    wrapped = PolicyWithValueHead(policy)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad])
    trainer = PPOTrainer(wrapped, tokenizer, options, lambda p, c, **k: [0.0] * len(c), optimizer=optimizer)
    assert trainer.optimizer is optimizer and trainer.model is wrapped


def test_step_passes_extras_repeated_per_generation(model, tokenizer) -> None:
    seen: dict[str, list] = {}

    def reward(prompts: list[str], completions: list[str], **extras) -> list[float]:
        seen.update(prompts=prompts, **extras)
        return [float(len(c)) for c in completions]

    options = PPOOptions(batch_size=2, num_generations=2, mini_batch_size=2, max_new_tokens=3, ppo_epochs=1)
    trainer = PPOTrainer(lora(model), tokenizer, options, reward)
    stats = trainer.train([{"prompt": "ab", "answer": "1"}, {"prompt": "cd", "answer": "2"}], steps=1)[0]
    assert seen["answer"] in (["1", "1", "2", "2"], ["2", "2", "1", "1"])
    assert seen["prompts"][0] == seen["prompts"][1] != seen["prompts"][2]
    expected = {"reward", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "policy_clipfrac"}
    assert expected | {"value_clipfrac", "approx_kl", "response_length"} <= stats.keys()
    with pytest.raises(ValueError, match="`answer` has 1 values for 2 prompts"):
        trainer.step(["a", "b"], answer=["x"])
