"""Rollouts: prompts in, sampled completions out, with the mask of the tokens each completion really has."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedTokenizerBase

from llm_finetuning.methods.ppo.config import PPOOptions

Prompt = str | list[dict[str, Any]]
"""A plain-text prompt, or a conversation (list of chat messages) rendered with the tokenizer's chat template."""


@dataclass
class Rollout:
    """One batch of sampled completions. Prompts are left-padded, completions right-padded."""

    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    """1 on each completion's tokens up to and including its end-of-sequence token, 0 after."""
    ended: Tensor
    """Whether each completion produced an end-of-sequence token (False: cut at `max_new_tokens`)."""
    prompts: list[str]
    completions: list[str]

    @property
    def input_ids(self) -> Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def __len__(self) -> int:
        return self.query_ids.shape[0]


def render_prompt(prompt: Prompt, tokenizer: PreTrainedTokenizerBase) -> str:
    """The text the policy continues: the prompt itself, or a conversation ready for the assistant's turn."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    prompts: Sequence[Prompt], tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> tuple[list[str], Tensor, Tensor]:
    """Prompt texts and their left-padded token ids and attention mask.

    Left padding puts every prompt's last token in the same column, so generation continues all rows at once.
    Too-long prompts lose their beginning, which is farther from what the policy must write next.
    """
    texts = [render_prompt(prompt, tokenizer) for prompt in prompts]
    rows: list[list[int]] = []
    for prompt, text in zip(prompts, texts, strict=True):
        # A chat template writes its own special tokens; a plain prompt gets the tokenizer's (e.g. a BOS).
        ids = tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        if not ids:
            raise ValueError(f"prompt {text!r} encodes to no tokens; remove empty prompts from the data")
        rows.append(ids[-max_length:] if max_length else ids)
    width = max(len(ids) for ids in rows)
    pad = pad_token_id(tokenizer)
    query_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows])
    query_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows])
    return texts, query_ids, query_mask


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id; EOS doubles as padding for tokenizers without one (the masks tell them apart)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set one before PPO")
    return int(pad)


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, model: Any) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids: list[int] = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.extend(int(i) for i in (configured if isinstance(configured, list) else [configured]))
    if not ids:
        raise ValueError("no end-of-sequence token is known; set tokenizer.eos_token before PPO")
    return sorted(set(ids))


def truncate_after_eos(response_ids: Tensor, eos_ids: Sequence[int], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each completion after its first EOS: (ids with pad after it, mask up to and including it, ended)."""
    is_eos = torch.isin(response_ids, torch.tensor(list(eos_ids), device=response_ids.device))
    # A position counts while no EOS came strictly before it; the first EOS itself counts (its logprob is an
    # action the policy took, and it is where the sequence score is paid).
    mask = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask.long(), is_eos.any(dim=1)


def generation_config(options: PPOOptions, eos_ids: list[int], pad_id: int) -> GenerationConfig:
    """Sampling settings of the rollout; complete, so the model's own generation defaults cannot change them."""
    return GenerationConfig(
        do_sample=True,
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_k=options.top_k or 0,
        top_p=options.top_p,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    options: PPOOptions,
    eos_ids: list[int],
) -> Rollout:
    """Sample one completion per prompt from `model` (the policy; repeat prompts for several per prompt)."""
    pad = pad_token_id(tokenizer)
    texts, query_ids, query_mask = encode_prompts(prompts, tokenizer, options.max_prompt_length)
    device = next(model.parameters()).device
    query_ids, query_mask = query_ids.to(device), query_mask.to(device)
    output = model.generate(
        input_ids=query_ids,
        attention_mask=query_mask,
        generation_config=generation_config(options, eos_ids, pad),
    )
    response_ids, response_mask, ended = truncate_after_eos(output[:, query_ids.shape[1] :], eos_ids, pad)
    completions = tokenizer.batch_decode(
        [ids[mask.bool()] for ids, mask in zip(response_ids, response_mask, strict=True)],
        skip_special_tokens=True,
    )
    return Rollout(query_ids, query_mask, response_ids, response_mask, ended, texts, completions)
