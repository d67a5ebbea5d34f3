"""The DPO, ORPO and KTO losses the trainers compute equal the papers' formulas on the batch's log-probabilities.

The policy and reference log-probabilities are computed here, independently, from the models' logits on a fixed
batch; the formulas are written out from the papers (DPO: Rafailov et al. 2023 eq. 7; IPO: Azar et al. 2023
eq. 17, with TRL's documented per-token normalisation; hinge: Zhao et al. 2023 SLiC; ORPO: Hong et al. 2024
eq. 6-7).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm_finetuning.config import Config
from llm_finetuning.data.pipeline import PreparedData, SplitStats
from llm_finetuning.methods import METHODS
from llm_finetuning.models.adapters import apply_adapter
from llm_finetuning.models.loading import load_model, load_tokenizer, prepare_tokenizer
from llm_finetuning.runs.rundir import RunDir

pytestmark = pytest.mark.unit

ROWS = [
    {
        "prompt": [{"role": "user", "content": "Pick a colour"}],
        "chosen": [{"role": "assistant", "content": "Teal."}],
        "rejected": [{"role": "assistant", "content": "I refuse to answer that."}],
    },
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5, probably"}],
    },
]


UNPAIRED = [
    {
        "prompt": [{"role": "user", "content": "Pick a colour"}],
        "completion": [{"role": "assistant", "content": "Teal."}],
        "label": True,
    },
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "5, probably"}],
        "label": False,
    },
    {
        "prompt": [{"role": "user", "content": "Say hi"}],
        "completion": [{"role": "assistant", "content": "hi"}],
        "label": True,
    },
    {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "completion": [{"role": "assistant", "content": "Berlin."}],
        "label": False,
    },
]


def build(tmp_path, method: dict, rows: list | None = None, batch_size: int = 2):
    from datasets import Dataset

    config = Config.model_validate(
        {
            "model": {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "seed": 1}},
            "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "init": "gaussian"},
            "method": method,
            "data": {"train": {"path": "unused.jsonl", "format": "preference"}, "max_length": 128},
            "training": {"per_device_batch_size": batch_size, "max_steps": 1},
            "output_dir": str(tmp_path / "run"),
        }
    )
    tokenizer = load_tokenizer(config.model)
    prepare_tokenizer(tokenizer, None)
    torch.manual_seed(0)
    model = apply_adapter(load_model(config.model, tokenizer), config.adapter)
    # Move the adapter away from zero so the policy differs from the reference (the disabled adapter).
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    data = PreparedData(Dataset.from_list(rows or ROWS), None, {"train": SplitStats()}, {})
    trainer = METHODS[method["name"]].build_trainer(config, RunDir(tmp_path / "run"), model, tokenizer, data, [])
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, model, batch


def sequence_logps(model, batch, average: bool = False, prefix: str = "") -> torch.Tensor:
    """Sum (or mean) over completion tokens of log p(token | prefix), computed from the logits."""
    ids = batch[f"{prefix}input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch[f"{prefix}attention_mask"]).logits[:, :-1]
    targets = ids[:, 1:]
    mask = batch[f"{prefix}completion_mask"][:, 1:].float()
    per_token = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets[..., None])[..., 0]
    total = (per_token * mask).sum(dim=1)
    return total / mask.sum(dim=1) if average else total


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_equals_the_formula(tmp_path, loss_type):
    beta = 0.3
    trainer, model, batch = build(tmp_path, {"name": "dpo", "beta": beta, "loss_type": loss_type})
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    policy = sequence_logps(model, batch)
    with model.disable_adapter():
        reference = sequence_logps(model, batch)
    pc, pr = policy.chunk(2)
    rc, rr = reference.chunk(2)
    delta = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        expected = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        expected = torch.relu(1 - beta * delta)
    else:
        lengths = batch["completion_mask"][:, 1:].sum(dim=1).float()
        lc, lr = lengths.chunk(2)
        expected = ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2
    assert delta.abs().min() > 1e-3  # the policy really differs from the reference
    torch.testing.assert_close(loss, expected.mean(), rtol=1e-4, atol=1e-5)


def test_orpo_loss_equals_the_formula(tmp_path):
    beta = 0.25
    trainer, model, batch = build(tmp_path, {"name": "orpo", "beta": beta})
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    # ORPO batches are built by its own collator; recompute the average log-probs from its concatenated inputs.
    concatenated = trainer.concatenated_inputs(batch, padding_value=trainer.padding_value)
    ids, attention = concatenated["concatenated_input_ids"], concatenated["concatenated_attention_mask"]
    labels = concatenated["concatenated_labels"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    targets, mask = labels[:, 1:], (labels[:, 1:] != -100).float()
    per_token = torch.gather(F.log_softmax(logits, -1), 2, targets.clamp(min=0)[..., None])[..., 0] * mask
    average = per_token.sum(1) / mask.sum(1)
    chosen, rejected = average.chunk(2)
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    n_chosen = mask.chunk(2)[0].sum()
    nll = -(per_token.chunk(2)[0].sum()) / n_chosen
    expected = nll - beta * F.logsigmoid(log_odds).mean()
    assert not math.isnan(loss.item())
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_kto_loss_equals_the_formula(tmp_path):
    """Ethayarajh et al. 2024, eq. 8: desirable 1 - sigmoid(beta (r - z0)), undesirable 1 - sigmoid(beta (z0 - r)),
    with r the policy/reference log-ratio and z0 the (clamped, detached) KL estimate from mismatched pairs."""
    beta, desirable, undesirable = 0.4, 1.0, 1.7
    method = {"name": "kto", "beta": beta, "desirable_weight": desirable, "undesirable_weight": undesirable}
    trainer, model, batch = build(tmp_path, method, UNPAIRED, batch_size=4)
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    ratio = sequence_logps(model, batch)
    kl_policy = sequence_logps(model, batch, prefix="KL_")
    with model.disable_adapter():
        ratio = ratio - sequence_logps(model, batch)
        kl_policy = kl_policy - sequence_logps(model, batch, prefix="KL_")
    z0 = kl_policy.mean().clamp(min=0)
    labels = torch.as_tensor(batch["label"], dtype=torch.bool)
    chosen = desirable * (1 - torch.sigmoid(beta * (ratio[labels] - z0)))
    rejected = undesirable * (1 - torch.sigmoid(beta * (z0 - ratio[~labels])))
    expected = torch.cat([chosen, rejected]).mean()
    assert ratio.abs().min() > 1e-3
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
