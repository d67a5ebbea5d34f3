"""Sampling from merged LoRA weights: the same model as the adapter path, base weights never written, refreshed from
the adapter before every generation, and only plain LoRA on nn.Linear merged."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llm_finetuning.models.merged_generation import MergedWeights, mergeable, sample_from_merged

pytestmark = pytest.mark.unit


def llama(dtype: torch.dtype = torch.float32, **lora) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    base = LlamaForCausalLM(config).to(dtype)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False, **lora}
    return get_peft_model(base, LoraConfig(**settings))


def prompt() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 9, 17, 3, 44], [0, 0, 8, 61, 2]])
    return {"input_ids": ids, "attention_mask": (torch.arange(5) >= torch.tensor([[0], [2]])).long()}


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" not in k}


def greedy(model: torch.nn.Module) -> torch.Tensor:
    return model.generate(**prompt(), max_new_tokens=6, do_sample=False, pad_token_id=0)


def count_adapter_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_merged_sampling_is_the_adapter_model_without_the_adapter_kernels():
    model = llama()
    expected_logits = model(**prompt()).logits
    expected = greedy(model)
    before = base_weights(model)
    calls = count_adapter_calls(model)
    merged = sample_from_merged(model)
    assert merged is not None and len(merged.layers) == 14 and merged.kept == 0  # 7 linears x 2 layers
    calls[0] = 0
    assert torch.equal(greedy(model), expected)
    assert calls[0] == 0  # every decoded token ran the merged matmul, never the adapter's
    with merged.active():
        assert torch.allclose(model(**prompt()).logits, expected_logits, atol=1e-5)
    # The frozen weights are bit for bit what they were, and training runs the adapter path again.
    assert all(torch.equal(before[k], v) for k, v in base_weights(model).items())
    assert all("forward" not in vars(layer) for layer in merged.layers)
    calls[0] = 0
    out = model(**prompt()).logits
    assert calls[0] == 14 and torch.allclose(out, expected_logits, atol=0)


def test_each_generation_merges_the_adapter_as_it_is_now_into_the_same_buffers():
    model = llama()
    merged = sample_from_merged(model)
    greedy(model)
    addresses = [w.data_ptr() for w in merged.weights]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = model(**prompt(), labels=prompt()["input_ids"]).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)
    optimizer.step()
    trained = model(**prompt()).logits
    with merged.active():
        assert torch.allclose(model(**prompt()).logits, trained, atol=1e-5)
    assert [w.data_ptr() for w in merged.weights] == addresses and merged.refreshes == 2


def test_the_merged_weight_is_rounded_once_into_the_base_dtype():
    model = llama(torch.bfloat16)
    merged = MergedWeights(model)
    merged.refresh()
    layer, weight = merged.layers[0], merged.weights[0]
    exact = layer.base_layer.weight.float() + layer.get_delta_weight("default").float()
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, exact.to(torch.bfloat16))


def test_a_disabled_adapter_keeps_the_base_model_while_sampling():
    model = llama()
    merged = sample_from_merged(model)
    with model.disable_adapter():
        plain = model(**prompt()).logits
        with merged.active():
            assert torch.equal(model(**prompt()).logits, plain)


def test_only_plain_lora_on_linear_layers_is_merged(caplog):
    dora = llama(use_dora=True)
    assert not any(mergeable(m) for m in dora.modules())
    caplog.set_level(logging.WARNING)
    expected = greedy(dora)
    assert sample_from_merged(dora) is None and "stays on the adapter path" in caplog.text
    assert torch.equal(greedy(dora), expected)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    conv = get_peft_model(gpt2, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    assert sample_from_merged(conv) is None  # GPT-2's Conv1D layers keep the adapter path


def test_the_copy_is_counted():
    model = llama()
    merged = MergedWeights(model)
    assert merged.nbytes == 4 * 2 * sum(lin.base_layer.weight.numel() for lin in merged.layers[:7])
