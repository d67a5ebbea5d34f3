"""PPO end to end on a tiny model: a programmatic reward rises while the KL to the reference stays bounded.

Task: write digits. The reward is the fraction of the 8 completion tokens that are ASCII digits; a random model
writes one about 10 times in 260 (the byte vocabulary), so it starts near 0.04. The policy that always writes a
digit and stays nearest the reference spreads evenly over the 10 digits, a KL of 8 ln(26) = 26 nats per
completion; the KL penalty (kl_coef 0.03) must keep the policy below that, i.e. short of collapsing.
"""

from __future__ import annotations

import gc
import math
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llm_finetuning.config.adapters import LoraAdapter
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.methods.ppo import PPOOptions, PPOTrainer, frozen_copy, load_value_head
from llm_finetuning.methods.ppo.trainer import WALL_CLOCK_STATS
from llm_finetuning.models.adapters import apply_adapter
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytestmark = [
    pytest.mark.e2e,
    # The LoRA test adapts the output head, which the tiny model ties to its input embeddings: PEFT then says so
    # and saves the embeddings with the adapter, which is what this test wants.
    pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning"),
]

SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2)
DIGITS = "0123456789"
MAX_NEW_TOKENS = 8
STEPS = 40
KL_BOUND = MAX_NEW_TOKENS * math.log(26)  # nats per completion; see the module docstring
WORDS = ["hi", "abc", "tell", "zz", "ok", "go", "hey", "yo"]


def digit_fraction(prompts: list[str], completions: list[str], **extras: object) -> list[float]:
    return [sum(ch in DIGITS for ch in completion) / MAX_NEW_TOKENS for completion in completions]


def options(learning_rate: float) -> PPOOptions:
    return PPOOptions(
        batch_size=16,
        mini_batch_size=8,
        max_new_tokens=MAX_NEW_TOKENS,
        ppo_epochs=4,
        learning_rate=learning_rate,
        kl_coef=0.03,
        seed=0,
    )


@pytest.fixture
def tokenizer():
    return build_tokenizer()


def lora_policy(tokenizer):
    # The tiny model's output embeddings are small random vectors, so only an adapter on the output head can
    # move its next-token distribution far; attention adapters alone barely can.
    adapter = LoraAdapter(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "lm_head"])
    torch.manual_seed(0)  # the LoRA initialisation draws from the global generator
    return apply_adapter(build_model(SHAPE, tokenizer), adapter)


def assert_learned(history: list[dict[str, float]], vocab_size: int) -> None:
    rewards = [s["reward"] for s in history]
    kls = [s["kl"] for s in history]
    chance = len(DIGITS) / vocab_size
    start, end = statistics.mean(rewards[:3]), statistics.mean(rewards[-5:])
    assert start < 2.5 * chance, rewards
    assert end > 3 * start and end > 4 * chance, rewards
    assert max(kls) < KL_BOUND, kls
    assert all(math.isfinite(s["policy_loss"]) and math.isfinite(s["value_loss"]) for s in history)
    assert all(0.0 <= s["policy_clipfrac"] <= 1.0 and 0.0 <= s["value_clipfrac"] <= 1.0 for s in history)


def live_models() -> int:
    gc.collect()
    return sum(type(o) is LlamaForCausalLM for o in gc.get_objects())


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["hello digits"], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_ppo_with_lora_uses_the_disabled_adapter_as_reference(tmp_path: Path, tokenizer, monkeypatch) -> None:
    policy = lora_policy(tokenizer)
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
    models_before = live_models()
    disabled = []
    original = policy.disable_adapter

    def counting_disable_adapter():
        disabled.append(1)
        return original()

    monkeypatch.setattr(policy, "disable_adapter", counting_disable_adapter)
    recorded: list[dict[str, float]] = []
    trainer = PPOTrainer(policy, tokenizer, options(3e-3), digit_fraction, log_fn=recorded.append)
    prompts = [[{"role": "user", "content": word}] for word in WORDS]
    history = trainer.train(prompts, steps=STEPS)

    assert recorded == history and len(history) == STEPS
    assert_learned(history, len(tokenizer))
    # The reference is the policy itself under disable_adapter, once per scoring chunk; no second model exists.
    assert trainer.reference.ref_model is None
    assert len(disabled) == STEPS * 2
    assert live_models() == models_before
    for name, parameter in policy.named_parameters():
        if name in base_before:
            assert torch.equal(parameter, base_before[name]), f"frozen {name} changed"
    assert all(not torch.equal(p, lora_before[n]) for n, p in policy.named_parameters() if n in lora_before)

    out = trainer.save(tmp_path / "final")
    assert (out / "adapter_config.json").is_file() and (out / "value_head.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(build_model(SHAPE, tokenizer), out).eval()
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(policy.eval(), tokenizer))
    head = load_value_head(out)
    torch.testing.assert_close(head.summary.weight, trainer.model.value_head.summary.weight)
    assert not torch.all(head.summary.weight == 0)  # the value head trained
    saved = yaml.safe_load((out / "ppo_options.yaml").read_text())
    assert PPOOptions.model_validate(saved) == trainer.options


def test_ppo_full_weights_with_a_frozen_reference_copy(tmp_path: Path, tokenizer) -> None:
    policy = build_model(SHAPE, tokenizer)
    reference = frozen_copy(policy)
    reference_before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    policy_before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = PPOTrainer(policy, tokenizer, options(3e-3), digit_fraction, ref_model=reference)
    history = trainer.train(WORDS, steps=STEPS)

    assert_learned(history, len(tokenizer))
    assert trainer.reference.ref_model is reference
    assert all(torch.equal(p, reference_before[n]) for n, p in reference.named_parameters())
    assert all(not torch.equal(p, policy_before[n]) for n, p in policy.named_parameters())

    out = trainer.save(tmp_path / "final")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(policy.eval(), tokenizer))
    torch.testing.assert_close(load_value_head(out).summary.bias, trainer.model.value_head.summary.bias)


def test_same_seed_same_run(tokenizer) -> None:
    def run() -> list[dict[str, float]]:
        options = PPOOptions(batch_size=4, mini_batch_size=2, max_new_tokens=4, learning_rate=1e-2, seed=3)
        trainer = PPOTrainer(lora_policy(tokenizer), tokenizer, options, digit_fraction)
        history = trainer.train(WORDS, steps=3)
        for stats in history:  # the phases split the step's wall-clock time
            phases = [stats[k] for k in WALL_CLOCK_STATS if k.startswith("time/")]
            assert len(phases) == 4 and min(phases) >= 0 and stats["time/generation"] > 0
            assert sum(phases) == pytest.approx(stats["step_time_s"], rel=0.05)
        return [{k: v for k, v in s.items() if k not in WALL_CLOCK_STATS} for s in history]

    assert run() == run()
