"""One shared transformers backbone with several task heads (`method: multi_head`).

Classification and regression heads are a linear layer on a pooled hidden state (the first token, the last real
token, or the mean of the real tokens); an `lm` head is the backbone's own LM head, so a decoder keeps generating.
Each forward pass runs one head on one batch and returns that head's loss, already multiplied by its weight.

On disk (`final/`): the backbone as transformers saves it (it loads alone with `AutoModel`/`AutoModelForCausalLM`),
`heads.safetensors` with the heads' weights and `multihead.json` describing them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_finetuning.errors import ConfigError

DESCRIPTION = "multihead.json"
HEAD_WEIGHTS = "heads.safetensors"


@dataclass(frozen=True)
class HeadSpec:
    name: str
    type: str
    """`classification`, `regression` or `lm`."""
    labels: list[str] = field(default_factory=list)
    multi_label: bool = False
    weight: float = 1.0

    @property
    def outputs(self) -> int:
        return len(self.labels) if self.type == "classification" else 1


def resolve_pooling(pooling: str, decoder: bool) -> str:
    """`auto` is the first token for encoders and the last real token for decoders; `cls` on a decoder is refused."""
    if pooling == "auto":
        return "lasttoken" if decoder else "cls"
    if pooling == "cls" and decoder:
        raise ConfigError(
            "method.pooling: `cls` reads the first token, which in a decoder sees nothing after it. Use `lasttoken` "
            "or `mean`."
        )
    return pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per row from (rows, tokens, width) hidden states; `mask` marks the real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    # The last real token, wherever the padding is (right or left): the highest position the mask marks.
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class MultiHeadModel(nn.Module):
    def __init__(self, backbone: nn.Module, heads: list[HeadSpec], pooling: str, decoder: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.specs = {head.name: head for head in heads}
        self.decoder = decoder
        self.pooling = resolve_pooling(pooling, decoder)
        width = backbone.config.get_text_config().hidden_size
        self.heads = nn.ModuleDict(
            {h.name: nn.Linear(width, h.outputs) for h in heads if h.type != "lm"}  # the LM head is the backbone's
        )
        if any(h.type == "lm" for h in heads) and backbone.get_output_embeddings() is None:
            raise ConfigError("method.heads: an `lm` head needs a decoder with an LM head (a causal LM model)")
        self.config = backbone.config  # what transformers' Trainer reads (e.g. to save and to count)

    # ------------------------------------------------------------------------------------------ running
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        encoder = self.backbone.base_model if self.backbone.get_output_embeddings() is not None else self.backbone
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head: str,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        spec = self.specs[head]
        hidden = self.hidden(input_ids, attention_mask)
        if spec.type == "lm":
            logits = self.backbone.get_output_embeddings()(hidden)
        else:
            logits = self.heads[head](pool(hidden, attention_mask, self.pooling))
            if spec.type == "regression":
                logits = logits.squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = spec.weight * head_loss(spec, logits, labels)
        return out

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """What the trainer calls for `training.gradient_checkpointing`: the backbone's own, with input gradients on
        so a frozen embedding (LoRA) still passes gradients to the checkpointed layers."""
        self.backbone.activation_checkpointing_enable(**kwargs)
        self.backbone.enable_input_require_grads()

    @property
    def is_activation_checkpointing(self) -> bool:
        return bool(getattr(self.backbone, "is_activation_checkpointing", False))

    def head(self, name: str) -> nn.Module:
        """The model for one head alone, sharing the weights: the causal LM itself for the `lm` head."""
        if name not in self.specs:
            raise KeyError(f"no head `{name}`; heads: {', '.join(self.specs)}")
        if self.specs[name].type == "lm":
            return self.backbone
        return SingleHead(self, name)

    # ----------------------------------------------------------------------------------------- storage
    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path, safe_serialization=True)
        weights = {
            f"{name}.{key}": value.contiguous()
            for name, head in self.heads.items()
            for key, value in head.state_dict().items()
        }
        save_file(weights, path / HEAD_WEIGHTS)
        description = {
            "heads": [asdict(spec) for spec in self.specs.values()],
            "pooling": self.pooling,
            "decoder": self.decoder,
            "backbone": "causal_lm" if self.backbone.get_output_embeddings() is not None else "model",
        }
        (path / DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> MultiHeadModel:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForCausalLM

        path = Path(path)
        description = json.loads((path / DESCRIPTION).read_text(encoding="utf-8"))
        loader = AutoModelForCausalLM if description["backbone"] == "causal_lm" else AutoModel
        backbone = loader.from_pretrained(path, **kwargs)
        heads = [HeadSpec(**spec) for spec in description["heads"]]
        model = cls(backbone, heads, description["pooling"], description["decoder"])
        weights = load_file(path / HEAD_WEIGHTS)
        for name, head in model.heads.items():
            head.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".", 1)[0] == name})
        return model.eval()


class SingleHead(nn.Module):
    """A classification or regression head with the shared backbone: logits from token ids, or predictions."""

    def __init__(self, model: MultiHeadModel, name: str) -> None:
        super().__init__()
        self.model, self.name, self.spec = model, name, model.specs[name]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask, self.name)["logits"]

    @torch.no_grad()
    def predict(self, texts: list[str], tokenizer: Any, threshold: float = 0.5) -> list[Any]:
        """Labels (a list of them when multi-label) for classification, numbers for regression."""
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        logits = self(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
        if self.spec.type == "regression":
            return logits.tolist()
        if self.spec.multi_label:
            return [[self.spec.labels[i] for i, on in enumerate(row) if on] for row in (logits.sigmoid() > threshold)]
        return [self.spec.labels[i] for i in logits.argmax(-1).tolist()]


def head_loss(spec: HeadSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (or a sigmoid per class), mean squared error, or next-token cross-entropy."""
    functional = nn.functional
    if spec.type == "regression":
        return functional.mse_loss(logits.float(), labels.float())
    if spec.type == "classification":
        if spec.multi_label:
            return functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return functional.cross_entropy(logits.float(), labels)
    shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return functional.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)
