"""Tiny models, the builtin tokenizer, loading from a local hub-layout directory, and adapters."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from llm_finetuning.config.schema import FullAdapter, LoraAdapter, ModelConfig, TinyModelConfig
from llm_finetuning.errors import UserError
from llm_finetuning.models import tiny
from llm_finetuning.models.adapters import apply_adapter
from llm_finetuning.models.loading import load_model, load_tokenizer, prepare_tokenizer
from tests.conftest import shared

pytestmark = pytest.mark.unit

SHAPE = {"hidden_size": 16, "num_layers": 1, "num_heads": 2}


def small(**overrides) -> TinyModelConfig:
    return TinyModelConfig(**{**SHAPE, **overrides})


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer()


def sample_ids(tokenizer) -> torch.Tensor:
    rows = [tokenizer.encode("Hello, wörld!"), tokenizer.encode("日本語 🤖 ok?")]
    width = min(len(r) for r in rows)
    return torch.tensor([r[:width] for r in rows])


def save_tiny(directory: Path, tokenizer, shape: TinyModelConfig | None = None):
    """A tiny model (and its tokenizer) saved in hub layout; returns the in-memory model."""
    model = tiny.build_model(shape or small(seed=3), tokenizer).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


# ------------------------------------------------------------------------------------------ tiny model
def test_same_seed_builds_identical_weights_and_other_seed_differs(tokenizer):
    first = tiny.build_model(small(seed=7), tokenizer).state_dict()
    second = tiny.build_model(small(seed=7), tokenizer).state_dict()
    other = tiny.build_model(small(seed=8), tokenizer).state_dict()
    assert first.keys() == second.keys() == other.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    differing = [n for n in first if not torch.equal(first[n], other[n])]
    assert "model.embed_tokens.weight" in differing
    assert any("self_attn" in n for n in differing)


def test_vocabulary_matches_tokenizer(tokenizer):
    model = tiny.build_model(small(), tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)


def test_building_does_not_touch_global_rng(tokenizer):
    torch.manual_seed(1234)
    expected = torch.rand(8)
    torch.manual_seed(1234)
    tiny.build_model(small(seed=99), tokenizer)
    assert torch.equal(torch.rand(8), expected)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_architectures_build_and_return_logits(tokenizer, architecture):
    model = tiny.build_model(small(architecture=architecture, num_kv_heads=1), tokenizer).eval()
    assert model.config.model_type == architecture
    assert model.config.num_key_value_heads == 1
    ids = sample_ids(tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (ids.shape[0], ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------ builtin tokenizer
def random_unicode(rng: random.Random, length: int) -> str:
    chars = []
    while len(chars) < length:
        code = rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0x3000), rng.randrange(0x1F300, 0x1FAFF)])
        if not 0xD800 <= code <= 0xDFFF:
            chars.append(chr(code))
    return "".join(chars)


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii",
        "  leading and trailing spaces  ",
        "Hello , world . Isn't it ? do n't",  # no clean-up of spaces before punctuation
        "tabs\tnew\nlines\r\nand\x00nul",
        "ümlaut café naïve Ω ß",
        "日本語の文章と中文",
        "emoji 🤖👩‍👩‍👧 flags 🇫🇷",
        "combining e\u0301 zero\u200bwidth",
        "",
    ],
)
def test_builtin_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_builtin_tokenizer_round_trips_random_unicode(tokenizer):
    rng = random.Random(0)
    for _ in range(50):
        text = random_unicode(rng, rng.randrange(1, 60))
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_builtin_tokenizer_special_tokens_and_template(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    # Special tokens are single ids, not spelled out in bytes.
    assert tokenizer.encode("<|im_end|>") == [tokenizer.eos_token_id]


def test_builtin_tokenizer_saves_and_reloads_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\nünïcödé 🤖 text<|im_end|>\n<|pad|>"
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert len(reloaded) == len(tokenizer)
    assert (reloaded.eos_token, reloaded.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    assert reloaded.chat_template == tokenizer.chat_template


# ------------------------------------------------------------------------------- loading a local dir
def test_load_from_local_directory_gives_same_tokenizer_and_logits(tokenizer, tmp_path):
    original = save_tiny(tmp_path, tokenizer)
    config = ModelConfig(name=str(tmp_path), dtype="float32")
    loaded_tokenizer = load_tokenizer(config)
    ids = sample_ids(tokenizer)
    assert loaded_tokenizer.encode("Hello, wörld!") == tokenizer.encode("Hello, wörld!")
    loaded = load_model(config, loaded_tokenizer).eval()
    assert loaded.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, original(ids).logits)
    assert loaded.config.pad_token_id == tokenizer.pad_token_id
    assert loaded.config.eos_token_id == tokenizer.eos_token_id


def test_load_with_bfloat16_dtype(tokenizer, tmp_path):
    original = save_tiny(tmp_path, tokenizer)
    loaded = load_model(ModelConfig(name=str(tmp_path), dtype="bfloat16"), tokenizer)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(
        loaded.get_input_embeddings().weight,
        original.get_input_embeddings().weight.to(torch.bfloat16),
    )


def test_pickle_weights_need_allow_unsafe_weights(tokenizer, tmp_path):
    # transformers 5 writes safetensors even with safe_serialization=False, so write the pickle file by hand.
    model = tiny.build_model(small(seed=5), tokenizer).eval()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert not list(tmp_path.glob("*.safetensors"))

    with pytest.raises(UserError) as info:
        load_model(ModelConfig(name=str(tmp_path), dtype="float32"), tokenizer)
    assert "model.allow_unsafe_weights" in str(info.value)
    assert "model.name" in str(info.value)

    loaded = load_model(ModelConfig(name=str(tmp_path), dtype="float32", allow_unsafe_weights=True), tokenizer)
    ids = sample_ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, model(ids).logits)


@pytest.mark.parametrize("name", ["{tmp}/no-such-model", "no-such-org/no-such-model-xyz"])
def test_missing_model_is_a_user_error_naming_model_name(tokenizer, tmp_path, name):
    config = ModelConfig(name=name.format(tmp=tmp_path))
    with pytest.raises(UserError) as info:
        load_model(config, tokenizer)
    assert "model.name" in str(info.value)
    assert config.name in str(info.value)
    if name.startswith("{tmp}"):
        assert "does not exist" in str(info.value)  # a path is not mistaken for a hub id
    with pytest.raises(UserError) as info:
        load_tokenizer(config)
    assert "model.name" in str(info.value)


def test_embeddings_grow_to_a_tokenizer_with_added_tokens(tmp_path):
    gpt2 = load_tokenizer(ModelConfig(tokenizer=str(shared("tokenizers/gpt2"))))
    base_vocab = len(gpt2)
    original = tiny.build_model(small(seed=1), gpt2)
    original.save_pretrained(tmp_path)
    assert original.get_input_embeddings().weight.shape[0] == base_vocab

    changes = prepare_tokenizer(gpt2, "chatml")
    assert changes.added_tokens
    assert len(gpt2) > base_vocab

    model = load_model(ModelConfig(name=str(tmp_path), dtype="float32"), gpt2)
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(gpt2)
    assert model.get_output_embeddings().weight.shape[0] == len(gpt2)
    torch.testing.assert_close(embeddings[:base_vocab], original.get_input_embeddings().weight)
    assert model.config.pad_token_id == gpt2.pad_token_id
    assert model.config.eos_token_id == gpt2.eos_token_id == gpt2.convert_tokens_to_ids("<|im_end|>")
    assert model.config.pad_token_id != model.config.eos_token_id
    assert model.generation_config.pad_token_id == gpt2.pad_token_id
    assert model.generation_config.eos_token_id == gpt2.eos_token_id
    new_id = gpt2.convert_tokens_to_ids("<|im_start|>")
    assert new_id >= base_vocab
    with torch.no_grad():
        logits = model(torch.tensor([[new_id, gpt2.eos_token_id]])).logits
    assert logits.shape[-1] == len(gpt2)


# ---------------------------------------------------------------------------------------------- adapters
def test_lora_all_linear_adapts_every_linear_but_the_head(tokenizer):
    model = tiny.build_model(small(), tokenizer)
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert "lm_head" in linear
    wrapped = apply_adapter(model, LoraAdapter(r=2, alpha=4, dropout=0.0))

    modules = dict(wrapped.named_modules())
    for name in linear - {"lm_head"}:
        assert hasattr(modules[f"base_model.model.{name}"], "lora_A"), name
    assert not hasattr(modules["base_model.model.lm_head"], "lora_A")

    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable), [n for n in trainable if "lora_" not in n]
    # One A and one B matrix per adapted layer.
    assert len(trainable) == 2 * len(linear - {"lm_head"})


def test_lora_with_named_target_modules_adapts_only_those(tokenizer):
    model = tiny.build_model(small(), tokenizer)
    wrapped = apply_adapter(model, LoraAdapter(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    adapted = {name.rsplit(".", 1)[-1] for name, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_full_adapter_trains_every_parameter(tokenizer):
    model = tiny.build_model(small(), tokenizer)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    wrapped = apply_adapter(model, FullAdapter())
    assert wrapped is model
    assert all(p.requires_grad for p in wrapped.parameters())
