"""Contracts every adapter method keeps, checked table-driven over one tiny model (in the style of PEFT's tests).

For each entry of `CASES` (one adapter config), separately:

1. training lowers the loss on a fixed batch;
2. exactly the intended parameters train: changed == requires_grad == the method's expected names, and every
   frozen parameter stays bit-identical (the optimiser is handed *every* parameter, so this also checks that
   frozen ones receive no gradient);
3. saving and reloading gives the trained model's logits (PiSSA/OLoRA: the converted plain LoRA on an unmodified
   base);
4. with the adapter disabled the model gives the untouched base model's logits (where that is defined);
5. the number of trainable parameters matches a formula worked out by hand from the model's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_finetuning.config.adapters import (
    PROMPT_LEARNING,
    DoraAdapter,
    FreezeAdapter,
    FullAdapter,
    IA3Adapter,
    LoraAdapter,
    PrefixAdapter,
    PromptAdapter,
    PTuningAdapter,
)
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.models import tiny
from llm_finetuning.models.adapters import MUTATING_INITS, apply_adapter, count_parameters, save_initial_adapter

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------------------ model shape
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, seed=0)
H = SHAPE.hidden_size  # 32
L = SHAPE.num_layers  # 2
FF = SHAPE.intermediate_size  # 64
HEAD_DIM = H // SHAPE.num_heads  # 8
KV = SHAPE.num_kv_heads * HEAD_DIM  # 16: width of k_proj / v_proj outputs (grouped-query attention)
V = len(tiny.build_tokenizer())  # 260: 256 bytes + 4 special tokens
NVT = 4  # virtual tokens of the prompt-learning entries
R = 4  # LoRA rank

# (in_features, out_features) of every linear layer inside one Llama decoder layer.
LINEAR = {
    "q_proj": (H, H),
    "k_proj": (H, KV),
    "v_proj": (H, KV),
    "o_proj": (H, H),
    "gate_proj": (H, FF),
    "up_proj": (H, FF),
    "down_proj": (FF, H),
}
LAYER_NUMEL = sum(i * o for i, o in LINEAR.values()) + 2 * H  # no biases in Llama; two RMSNorm weights
MLP_NUMEL = sum(LINEAR[m][0] * LINEAR[m][1] for m in ("gate_proj", "up_proj", "down_proj"))
ALL_LINEAR = tuple(LINEAR)  # PEFT's "all-linear" on Llama: every linear layer except lm_head


def lora_count(r: int, modules: tuple[str, ...] = ALL_LINEAR) -> int:
    """A is r x in, B is out x r, per targeted layer."""
    return L * sum(r * (LINEAR[m][0] + LINEAR[m][1]) for m in modules)


def dora_count(r: int, modules: tuple[str, ...] = ALL_LINEAR) -> int:
    """LoRA plus one magnitude per output feature of each targeted layer."""
    return lora_count(r, modules) + L * sum(LINEAR[m][1] for m in modules)


def ia3_count() -> int:
    # PEFT's default IA3 mapping for llama: target k_proj, v_proj, down_proj; feed-forward: down_proj. Attention
    # targets scale their output (out_features), the feed-forward one scales its input (in_features).
    return L * (LINEAR["k_proj"][1] + LINEAR["v_proj"][1] + LINEAR["down_proj"][0])


def prefix_count(projection: bool) -> int:
    # PEFT sizes the prefix by the *key/value* width, not the hidden size: for models with `num_key_value_heads`
    # (grouped-query attention, peft#1901) `_prepare_prompt_learning_config` sets token_dim = num_kv_heads *
    # head_dim (16 here, not 32) because the prefix is concatenated to the cached keys and values of every layer.
    # The projection MLP's hidden width (`encoder_hidden_size`) also defaults to that token_dim.
    token_dim = KV
    if not projection:
        return NVT * L * 2 * token_dim  # one (key, value) vector per layer and virtual token
    hidden = token_dim
    return NVT * token_dim + (token_dim * hidden + hidden) + (hidden * L * 2 * token_dim + L * 2 * token_dim)


def prompt_count() -> int:
    return NVT * H  # one input embedding per virtual token


def p_tuning_count(encoder: str) -> int:
    h = H  # encoder_hidden_size defaults to token_dim = hidden size (no GQA adjustment outside prefix tuning)
    embedding = NVT * H
    if encoder == "mlp":  # Linear(H, h), Linear(h, h), Linear(h, H), all with bias
        return embedding + (H * h + h) + (h * h + h) + (h * H + H)
    # Bidirectional 2-layer LSTM (gates 4h; weight_ih, weight_hh, bias_ih, bias_hh per direction), then an MLP head
    # Linear(2h, 2h), Linear(2h, H).
    lstm = 2 * (4 * h * H + 4 * h * h + 8 * h) + 2 * (4 * h * 2 * h + 4 * h * h + 8 * h)
    head = (2 * h * 2 * h + 2 * h) + (2 * h * H + H)
    return embedding + lstm + head


# ------------------------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class Case:
    id: str
    adapter: Any
    expected: Callable[[str], bool]
    """Which parameter names (of the model handed to the optimiser) must train."""
    count: int
    """Trainable parameters, by hand."""
    lr: float = 1e-2
    xfail: dict[str, str] = field(default_factory=dict)
    """Contract name -> reason, for contracts this entry breaks because of a known bug in the source."""

    @property
    def peft(self) -> bool:
        return not isinstance(self.adapter, (FullAdapter, FreezeAdapter))

    @property
    def mutating(self) -> bool:
        return isinstance(self.adapter, LoraAdapter) and self.adapter.init in MUTATING_INITS


def lora_names(name: str) -> bool:
    return "lora_" in name  # lora_A / lora_B (and lora_magnitude_vector for DoRA)


def prompt_encoder_names(name: str) -> bool:
    return name.startswith("prompt_encoder.")


CASES = [
    Case("full", FullAdapter(), lambda n: True, V * H + L * LAYER_NUMEL + H),  # lm_head is tied to embed_tokens
    Case("freeze-last1", FreezeAdapter(layers=1), lambda n: n.startswith(f"model.layers.{L - 1}."), LAYER_NUMEL),
    Case(
        "freeze-l0-mlp+norm",
        FreezeAdapter(layers=[0], modules=["mlp"], extra_modules=["norm"]),
        lambda n: n.startswith("model.layers.0.mlp.") or n == "model.norm.weight",
        MLP_NUMEL + H,
    ),
    Case(
        "freeze-embed-tied",
        FreezeAdapter(layers=0, extra_modules=["embed_tokens"]),
        lambda n: n == "model.embed_tokens.weight",  # the one tensor behind embed_tokens and the tied lm_head
        V * H,
    ),
    Case("lora", LoraAdapter(r=R, alpha=8, dropout=0.0), lora_names, lora_count(R)),
    Case(
        "lora-rslora-qv",
        LoraAdapter(r=R, use_rslora=True, target_modules=["q_proj", "v_proj"]),
        lambda n: "lora_" in n and (".q_proj." in n or ".v_proj." in n),
        lora_count(R, ("q_proj", "v_proj")),
    ),
    Case("lora-pissa", LoraAdapter(r=R, init="pissa"), lora_names, lora_count(R)),
    Case("lora-olora", LoraAdapter(r=R, init="olora"), lora_names, lora_count(R)),
    Case("dora", DoraAdapter(r=R), lora_names, dora_count(R)),
    Case("ia3", IA3Adapter(), lambda n: "ia3_" in n, ia3_count()),
    Case("prefix", PrefixAdapter(num_virtual_tokens=NVT), prompt_encoder_names, prefix_count(False)),
    Case(
        "prefix-proj",
        PrefixAdapter(num_virtual_tokens=NVT, projection=True),
        prompt_encoder_names,
        prefix_count(True),
    ),
    Case("prompt", PromptAdapter(num_virtual_tokens=NVT), prompt_encoder_names, prompt_count(), lr=5e-2),
    Case(
        "prompt-text",
        PromptAdapter(num_virtual_tokens=NVT, init="text", init_text="answer the question"),
        prompt_encoder_names,
        prompt_count(),
        lr=5e-2,
    ),
    Case("p_tuning-mlp", PTuningAdapter(num_virtual_tokens=NVT), prompt_encoder_names, p_tuning_count("mlp")),
    Case(
        "p_tuning-lstm",
        PTuningAdapter(num_virtual_tokens=NVT, encoder="lstm"),
        prompt_encoder_names,
        p_tuning_count("lstm"),
    ),
]


def cases(contract: str) -> list[Any]:
    """The table as parameters of one contract, with that contract's known failures marked strict xfail."""
    params = []
    for case in CASES:
        marks = []
        if contract in case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[contract]))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def test_table_covers_every_method():
    assert {case.adapter.method for case in CASES} == {
        "full",
        "freeze",
        "lora",
        "dora",
        "ia3",
        *PROMPT_LEARNING,
    }
    assert len({case.id for case in CASES}) == len(CASES)


# -------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small gain nothing from intra-op threads, which thrash when other work shares the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builtin tokenizer saved to disk: prompt tuning's text init loads it by path."""
    path = tmp_path_factory.mktemp("tokenizer")
    tiny.build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    tokenizer = tiny.build_tokenizer()
    rows = [tokenizer.encode(text) for text in ("the quick brown fox jumps", "over the lazy dog again!")]
    width = min(len(r) for r in rows)
    input_ids = torch.tensor([r[:width] for r in rows])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def base_model() -> Any:
    return tiny.build_model(SHAPE, tiny.build_tokenizer())


def wrap(case: Case, model: Any, tokenizer_dir: Path) -> Any:
    torch.manual_seed(0)  # adapter initialisation draws random numbers
    return apply_adapter(model, case.adapter, tokenizer_path=str(tokenizer_dir))


def train(case: Case, model: Any, batch: dict[str, torch.Tensor], steps: int = 8) -> None:
    torch.manual_seed(0)  # dropout
    model.train()
    # Every parameter goes to the optimiser: a frozen one only stays put if it gets no gradient at all.
    optimizer = torch.optim.AdamW(model.parameters(), lr=case.lr)
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@torch.no_grad()
def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@torch.no_grad()
def eval_loss(model: Any, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    return model(**batch).loss.item()


# ------------------------------------------------------------------------------------------ contracts
@pytest.mark.parametrize("case", cases("loss"))
def test_training_lowers_the_loss(case, batch, tokenizer_dir):
    model = wrap(case, base_model(), tokenizer_dir)
    before = eval_loss(model, batch)
    train(case, model, batch)
    after = eval_loss(model, batch)
    assert after < before, f"{case.id}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("case", cases("params"))
def test_exactly_the_intended_parameters_change(case, batch, tokenizer_dir):
    model = wrap(case, base_model(), tokenizer_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    requires_grad = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {name for name in before if case.expected(name)}
    assert expected, f"{case.id}: the expected-name pattern matches no parameter"

    train(case, model, batch)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}

    assert requires_grad == expected, {
        "missing": sorted(expected - requires_grad),
        "unexpected": sorted(requires_grad - expected),
    }
    assert changed == requires_grad, {
        "trainable but unchanged": sorted(requires_grad - changed),
        "frozen but changed": sorted(changed - requires_grad),
    }
    for name in before.keys() - requires_grad:
        assert after[name].grad is None, f"{case.id}: frozen {name} got a gradient"
    if isinstance(case.adapter, DoraAdapter):
        assert any("lora_magnitude_vector" in name for name in requires_grad)


@pytest.mark.parametrize("case", cases("roundtrip"))
@pytest.mark.filterwarnings("ignore:(PiSSA|OLoRA) changes the base weights:UserWarning")
def test_save_and_reload_gives_the_trained_logits(case, batch, tokenizer_dir, tmp_path):
    model = wrap(case, base_model(), tokenizer_dir)
    initial = save_initial_adapter(model, case.adapter, tmp_path / "init")  # what train.py does
    assert (initial is not None) == case.mutating
    train(case, model, batch)
    trained = logits(model, batch)
    assert not torch.equal(trained, logits(base_model(), batch)), f"{case.id}: training did not change the model"

    if not case.peft:
        model.save_pretrained(tmp_path / "final")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32)
        torch.testing.assert_close(logits(reloaded, batch), trained, rtol=0, atol=0)
        return

    if case.mutating:
        # PiSSA/OLoRA moved part of each weight into the adapter; the saved adapter is converted back to a plain
        # LoRA (of twice the rank) relative to the original base, so it must load onto an unmodified base.
        model.save_pretrained(tmp_path / "final", path_initial_model_for_weight_conversion=str(initial))
        reloaded = PeftModel.from_pretrained(base_model(), tmp_path / "final")
        assert reloaded.peft_config["default"].r == 2 * case.adapter.r
        torch.testing.assert_close(logits(reloaded, batch), trained, rtol=0, atol=1e-4)
        return

    model.save_pretrained(tmp_path / "final")
    reloaded = PeftModel.from_pretrained(base_model(), tmp_path / "final")
    torch.testing.assert_close(logits(reloaded, batch), trained, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", cases("disabled"))
def test_disabled_adapter_gives_the_base_logits(case, batch, tokenizer_dir):
    if not case.peft:
        pytest.skip(f"{case.adapter.method} trains the model in place: there is no adapter to disable")
    if case.mutating:
        pytest.skip(f"{case.adapter.init} rewrites the base weights: disabled, it is the residual model, not the base")
    model = base_model()
    base = logits(model, batch)
    model = wrap(case, model, tokenizer_dir)
    train(case, model, batch)
    assert not torch.equal(logits(model, batch), base), f"{case.id}: training did not change the model"
    # LoRA/DoRA/IA3 bypass their layers; prompt learning swaps in the base model's forward (no virtual tokens).
    with model.disable_adapter():
        disabled = logits(model, batch)
    torch.testing.assert_close(disabled, base, rtol=0, atol=0)


@pytest.mark.parametrize("case", cases("count"))
def test_trainable_parameter_count_matches_the_formula(case, tokenizer_dir):
    model = wrap(case, base_model(), tokenizer_dir)
    counts = count_parameters(model)
    assert counts["trainable"] == case.count
    frozen_base = V * H + L * LAYER_NUMEL + H
    if case.peft:  # the whole base model is still there, frozen, next to the adapter
        assert counts["total"] == frozen_base + case.count
    else:
        assert counts["total"] == frozen_base
