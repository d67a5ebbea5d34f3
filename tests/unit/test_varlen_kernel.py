"""torch's varlen flash kernel on packed rows: one call per layer, no mask over the row, the padded loss and gradients.

The kernel runs on CUDA only, so the dispatch is tested on a mocked CUDA device: the kernel is a stand-in that takes
the arguments torch's `varlen_attn` takes (in each of its signatures) and computes causal attention per example
with sdpa. What is under test is our side: the arguments we pass, when we call it, and what we do with its output.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from llm_finetuning.config.schema import Config, TinyModelConfig
from llm_finetuning.models import fast_path, row_attention, varlen_attention, varlen_kernel
from llm_finetuning.models.fast_path import TORCH_VARLEN
from llm_finetuning.models.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.unit

ROWS = [{"input_ids": list(range(3, 3 + n)), "labels": list(range(40, 40 + n))} for n in (5, 9, 3)]
LAYERS = 3


def reference(query, key, value, bounds, scale=None):
    """Causal attention of each example alone, (tokens, heads, dim) in and out."""
    edges = bounds.tolist()
    groups = query.shape[1] // key.shape[1]
    pieces = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        q, k, v = (t[a:b].transpose(0, 1) for t in (query, key, value))
        k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
        pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(pieces)


class Kernel:
    """torch 2.12+'s signature: window_size, scale, enable_gqa."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, window_size=(-1, -1), scale=None,
                 enable_gqa=False, return_aux=None):  # fmt: skip
        self.calls.append({"q": query.shape, "k": key.shape, "window": window_size, "gqa": enable_gqa, "max": max_q})
        assert cu_seq_q is cu_seq_k and cu_seq_q.dtype == torch.int32 and window_size == (-1, 0)
        assert enable_gqa or query.shape[1] == key.shape[1]
        return reference(query, key, value, cu_seq_q, scale)


def old_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.9-2.10's signature: is_causal, no scale, no GQA."""
    assert is_causal and query.shape[1] == key.shape[1]
    return reference(query, key, value, cu_seq_q)


@pytest.fixture
def on_cuda(monkeypatch):
    """A stand-in kernel the toolkit takes for torch's, and tensors it takes for CUDA ones."""
    kernel = Kernel()
    monkeypatch.setattr(varlen_kernel, "load_kernel", lambda: kernel)
    monkeypatch.setattr(varlen_kernel, "kernel_dtype", lambda query: query.dtype)
    return kernel


def models():
    """The same tiny grouped-query model twice: plain sdpa (padded reference) and switched to torch varlen."""
    shape = TinyModelConfig(hidden_size=32, num_heads=4, num_kv_heads=2, num_layers=LAYERS, seed=3)
    sdpa = build_model(shape, build_tokenizer())
    sdpa.config.use_cache = False
    varlen = copy.deepcopy(sdpa)
    return sdpa, varlen


def collate(padding_free: bool) -> dict:
    return DataCollatorForLanguageModeling(pad_token_id=1, padding_free=padding_free)(ROWS)


def cuda_plan() -> fast_path.FastPath:
    config = Config.model_validate({"data": {"train": {"path": "x.jsonl", "format": "prompt_completion"}}})
    caps = fast_path.Capabilities(device="cuda", compute_capability=(9, 0), bf16=True, torch_varlen=True, triton=True)
    return fast_path.plan(config, caps)


def test_a_packed_row_is_one_kernel_call_per_layer_with_the_padded_loss_and_gradients(on_cuda, monkeypatch):
    sdpa, varlen = models()
    path = cuda_plan()
    assert path.attention.value == TORCH_VARLEN
    assert row_attention.prepare_rows(varlen, path)  # switched, and the isolation check passed through the kernel
    assert varlen.config._attn_implementation == TORCH_VARLEN

    def no_dense_mask(*args, **kwargs):
        raise AssertionError("a mask over the whole row was built")

    monkeypatch.setattr(varlen_attention, "sdpa_mask", no_dense_mask)
    on_cuda.calls.clear()
    packed = collate(padding_free=True)
    loss = varlen(**packed).loss
    assert len(on_cuda.calls) == LAYERS  # one call per layer for the whole row, never one per example
    assert all(call["q"] == (17, 4, 8) and call["k"] == (17, 2, 8) and call["gqa"] for call in on_cuda.calls)
    assert all(call["max"] == 9 for call in on_cuda.calls)  # the collator's longest example, no device sync
    padded = sdpa(**collate(padding_free=False)).loss
    assert loss.item() == pytest.approx(padded.item(), rel=1e-6)
    loss.backward()
    padded.backward()
    for a, b in zip(sdpa.parameters(), varlen.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_boundaries_come_from_restarting_positions_when_the_collator_gives_none(on_cuda):
    _, varlen = models()
    assert row_attention.use_row_attention(varlen, TORCH_VARLEN)
    packed = collate(padding_free=True)
    on_cuda.calls.clear()
    with torch.no_grad():
        together = varlen(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        assert len(on_cuda.calls) == LAYERS
        start = 0
        for row in ROWS:
            n = len(row["input_ids"])
            alone = varlen(input_ids=torch.tensor([row["input_ids"]])).logits[0]  # one sequence: sdpa
            torch.testing.assert_close(together[start : start + n], alone, rtol=1e-5, atol=1e-5)
            start += n
    assert len(on_cuda.calls) == LAYERS  # single sequences never reach the kernel


def test_padded_batches_generation_and_unsupported_tensors_take_the_sdpa_paths(on_cuda, monkeypatch):
    sdpa, varlen = models()
    assert row_attention.use_row_attention(varlen, TORCH_VARLEN)
    on_cuda.calls.clear()
    padded = collate(padding_free=False)
    with torch.no_grad():
        torch.testing.assert_close(varlen(**padded).logits, sdpa(**padded).logits)
        prompt = torch.tensor([[5, 6, 7]])
        settings = {"max_new_tokens": 4, "do_sample": False, "use_cache": True}
        assert torch.equal(varlen.generate(prompt, **settings), sdpa.generate(prompt, **settings))
    assert on_cuda.calls == []
    # float32 activations (or CPU tensors): torch's kernel would refuse them; per-example sdpa is exact
    monkeypatch.setattr(varlen_kernel, "kernel_dtype", lambda query: None)
    with torch.no_grad():
        packed = collate(padding_free=True)
        loss = varlen(**packed).loss
    assert on_cuda.calls == []
    assert loss.item() == pytest.approx(sdpa(**collate(padding_free=False)).loss.item(), rel=1e-6)


def test_the_kernel_takes_cuda_tensors_only():
    assert varlen_kernel.kernel_dtype(torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16)) is None  # CPU tensors
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert varlen_kernel.kernel_dtype(torch.zeros(1, 2, 3, 4)) is None


@pytest.mark.parametrize("scale", [None, 0.5])
def test_each_kernel_signature_gets_causal_attention_with_the_models_scale_and_heads(scale):
    torch.manual_seed(0)
    query, key, value = torch.randn(10, 4, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    bounds = torch.tensor([0, 4, 10], dtype=torch.int32)
    expected = reference(query, key, value, bounds, scale)
    new = Kernel()
    torch.testing.assert_close(varlen_kernel.call_kernel(new, query, key, value, bounds, 6, scale), expected)
    assert new.calls[0]["gqa"]
    # The old kernel has no scale and no GQA: the scale is folded into the queries, the key/value heads repeated.
    torch.testing.assert_close(varlen_kernel.call_kernel(old_kernel, query, key, value, bounds, 6, scale), expected)


def test_row_bounds_are_reused_within_a_forward_and_never_across_tensors():
    first = torch.tensor([[0, 1, 2, 0, 1]])
    bounds, longest = varlen_kernel.row_bounds({"position_ids": first}, 5, torch.device("cpu"))
    assert bounds.tolist() == [0, 3, 5] and longest == 3
    assert varlen_kernel.row_bounds({"position_ids": first}, 5, torch.device("cpu"))[0] is bounds  # cached
    del first
    second = torch.tensor([[0, 0, 1, 2, 3]])  # may reuse the first one's memory and id: must not reuse its bounds
    assert varlen_kernel.row_bounds({"position_ids": second}, 5, torch.device("cpu"))[0].tolist() == [0, 1, 5]
    second[0, 2] = 0  # changed in place
    assert varlen_kernel.row_bounds({"position_ids": second}, 5, torch.device("cpu"))[0].tolist() == [0, 1, 2, 5]
    assert varlen_kernel.row_bounds({"position_ids": torch.arange(5)[None]}, 5, torch.device("cpu")) is None
    wrong = {"cu_seq_lens_q": torch.tensor([0, 2, 4], dtype=torch.int32)}  # bounds of another row: not used
    assert varlen_kernel.row_bounds(wrong, 5, torch.device("cpu")) is None
