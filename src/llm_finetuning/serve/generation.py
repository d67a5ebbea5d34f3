"""Load what a run produced and generate from it with the chat template it was trained with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TextIteratorStreamer,
)

from llm_finetuning.errors import UserError

Messages = list[dict[str, str]]


def load_for_inference(target: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A run directory (its `merged/` if present, else `final/`: full model or adapter on its base) or a model
    directory / hub id; in eval mode."""
    path = Path(target)
    if (path / "final").is_dir():
        path = path / "merged" if (path / "merged" / "config.json").is_file() else path / "final"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else str(target))
        adapter = path / "adapter_config.json"
        if adapter.is_file():
            base = AutoModelForCausalLM.from_pretrained(json.loads(adapter.read_text())["base_model_name_or_path"])
            if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
                base.resize_token_embeddings(len(tokenizer))
            model = PeftModel.from_pretrained(base, path)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else str(target))
    except OSError as exc:
        raise UserError(f"Cannot load a model from `{target}`: {exc}") from None
    return model.eval(), tokenizer


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> str:
    """The text generation starts from: the conversation (and the tools, when given) in the tokenizer's chat
    template, with the assistant's turn opened. The one place prompts are rendered, so the server, `generate`
    and evaluation all prompt a model the same way."""
    if not tokenizer.chat_template:
        return "\n".join(m["content"] for m in messages)
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True)


def _render(tokenizer: PreTrainedTokenizerBase, prompt: str | Messages) -> str:
    return render_chat(tokenizer, [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)


def generation_settings(
    tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float, top_p: float
) -> dict:
    """`generate` keyword arguments: greedy when temperature is 0, else sampling with temperature and top_p."""
    sampling = temperature > 0
    settings: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sampling,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if sampling:
        settings.update(temperature=temperature, top_p=top_p)
    return settings


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str | Messages],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
) -> list[str]:
    """Completions for prompts (text, or chat messages), left-padded in batches; greedy when temperature is 0."""
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [_render(tokenizer, p) for p in prompts[start : start + batch_size]]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        tokens = model.generate(**inputs, **generation_settings(tokenizer, max_new_tokens, temperature, top_p))
        new = tokens[:, inputs["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


def stream_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> Iterator[str]:
    """Yield the reply to a conversation piece by piece as it is generated."""
    text = _render(tokenizer, messages)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    settings = {**inputs, **generation_settings(tokenizer, max_new_tokens, temperature, top_p), "streamer": streamer}
    worker = Thread(target=lambda: model.generate(**settings), daemon=True)
    worker.start()
    yield from streamer
    worker.join()
