"""The tokenizer half of a GGUF file: vocabulary, merges or scores, special tokens and the chat template.

llama.cpp knows two tokenizer families that cover the supported models: byte-level BPE (`gpt2`: GPT-2, Qwen2,
Llama 3, the project's own tiny tokenizer) and SentencePiece-style BPE with byte fallback (`llama`: Llama 2,
Mistral). Everything is read from the saved Hugging Face tokenizer (its `tokenizer.json`), so a run's `final/`
folder, which holds no `tokenizer.model`, exports the same way as a hub folder.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_finetuning.errors import UserError

logger = logging.getLogger(__name__)

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_GPT2_SPLIT = "gpt-2"  # llama.cpp's name for GPT-2's own split regex (ByteLevel with use_regex)


@dataclass
class GgufVocab:
    """Tokenizer metadata as llama.cpp's `tokenizer.ggml.*` keys hold it."""

    model: str
    tokens: list[str]
    types: list[int]
    pre: str | None = None
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | list[dict[str, str]] | None = None


def _pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for how text is split before BPE, from the tokenizer.json `pre_tokenizer`."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    for step in _steps(pre_tokenizer):
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return _GPT2_SPLIT
        pattern = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if pattern is not None:
            # Several names share a regex; the first one listed is a name llama.cpp accepts.
            names = [name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == pattern]
            if names:
                return names[0]
            logger.warning(
                "The tokenizer's split pattern is not one llama.cpp knows; writing tokenizer.ggml.pre=default, so "
                "llama.cpp may tokenize some text differently from the source tokenizer."
            )
            return "default"
    return "default"


def _steps(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json normalizer or pre-tokenizer, a `Sequence` flattened."""
    if not component:
        return []
    nested = component.get("normalizers") or component.get("pretokenizers")
    return [step for part in nested for step in _steps(part)] if nested else [component]


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether SentencePiece-style text gets a leading "\u2581" (Metaspace, or Llama 2's Prepend normalizer)."""
    for step in _steps(spec.get("normalizer")) + _steps(spec.get("pre_tokenizer")):
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return False


def _merge_strings(merges: list[Any]) -> list[str]:
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    return {kind: int(index) for kind, index in ids.items() if index is not None}


def _adds(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS, observed rather than read from flags that post-processors override."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return (bos is not None and ids[0] == bos), (eos is not None and len(ids) > 1 and ids[-1] == eos)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The folder's saved tokenizer (no remote code); `UserError` where there is none to embed."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise UserError(f"{folder}: no tokenizer files; GGUF embeds the tokenizer, so save it with the model.")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if not tokenizer.is_fast:
        raise UserError(f"{folder}: the tokenizer has no tokenizer.json form; GGUF export needs a fast tokenizer.")
    return tokenizer


def read_vocab(tokenizer: PreTrainedTokenizerBase, n_vocab: int) -> GgufVocab:
    """The GGUF tokenizer metadata for `tokenizer`, its token list padded to the model's `n_vocab` rows."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"A {model.get('type')} tokenizer cannot be exported to GGUF (BPE tokenizers only).")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) and not model.get("byte_fallback")
    if not byte_level and not model.get("byte_fallback"):
        raise UserError("The tokenizer is neither byte-level BPE nor SentencePiece-style BPE; GGUF export needs one.")

    by_id: dict[int, str] = {index: token for token, index in model["vocab"].items()}
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    by_id.update({index: entry["content"] for index, entry in added.items()})
    if max(by_id) >= n_vocab:
        raise UserError(f"The tokenizer has ids up to {max(by_id)} but the model only {n_vocab} embedding rows.")

    merges = _merge_strings(model.get("merges") or [])
    unk = tokenizer.unk_token_id
    tokens, types = [], []
    for index in range(n_vocab):
        token = by_id.get(index)
        if token is None:  # embedding rows beyond the tokenizer (vocab padded to a multiple): never produced
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if index == unk and not byte_level:  # byte-level BPE has no unknown text; its "unk" is an ordinary special
            types.append(gguf.TokenType.UNKNOWN)
        elif index in added:
            types.append(gguf.TokenType.CONTROL if added[index].get("special") else gguf.TokenType.USER_DEFINED)
        elif not byte_level and _BYTE_TOKEN.fullmatch(token):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)

    add_bos, add_eos = _adds(tokenizer)
    vocab = GgufVocab(
        model="gpt2" if byte_level else "llama",
        tokens=tokens,
        types=[int(kind) for kind in types],
        special_ids=_special_ids(tokenizer),
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=_chat_template(tokenizer),
    )
    if byte_level:
        vocab.pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
        vocab.merges = merges
    else:
        vocab.scores = _scores(tokens, types, merges)
        vocab.add_space_prefix = _adds_space_prefix(spec)
    return vocab


def _scores(tokens: list[str], types: list[int], merges: list[str]) -> list[float]:
    """SentencePiece-style scores: llama.cpp merges the adjacent pair whose result scores highest, so a token
    made by merge number r scores -r and merges happen in the tokenizer's merge order. Tokens no merge makes
    are never the result of one, so their score only has to rank below every merged token."""
    rank: dict[str, int] = {}
    for number, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), number)
    floor = -float(len(merges))
    return [
        (-float(rank[token]) if token in rank else floor - index) if kind == gguf.TokenType.NORMAL else 0.0
        for index, (token, kind) in enumerate(zip(tokens, types, strict=True))
    ]


def _chat_template(tokenizer: PreTrainedTokenizerBase) -> str | list[dict[str, str]] | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: llama.cpp stores the default plus `chat_template.NAME`
        return [{"name": name, "template": text} for name, text in template.items()]
    return template


def write_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab) -> None:
    """Add the `tokenizer.*` keys to `writer`."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        # llama.cpp requires the key for a BPE vocabulary even when there are no merges (a pure byte tokenizer).
        array, string = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING
        writer.add_key_value(gguf.Keys.Tokenizer.MERGES, vocab.merges, array, string)
    for kind, index in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(index)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
