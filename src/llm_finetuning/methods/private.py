"""DP-SGD for SFT (`training.privacy`) on TRL's SFTTrainer, through Opacus.

What changes against ordinary SFT, and why:
- Batches are drawn by Poisson sampling (each example independently, with rate q = batch size / N), which is
  what the accountant's bound assumes; a batch may be empty, and then the step still adds its noise.
- Opacus's hooks compute every example's gradient; each is clipped to `max_grad_norm`, their sum gets Gaussian
  noise of `noise_multiplier x max_grad_norm`, divided by the expected batch size. The transformers clipping of
  the summed gradient is off: it would bound the wrong quantity.
- The loss is the mean over examples of each example's mean token loss, so an example's gradient depends on that
  example alone (the usual token mean over the batch would weight it by the others' lengths). Batches are padded,
  never packed or padding-free, for the same reason.
- The noise multiplier is the smallest that keeps the whole run within `epsilon` at `delta` (Opacus's
  `get_noise_multiplier` for the run's sampling rate and step count); the accountant then tracks what each step
  spends, and its epsilon is logged as `privacy/epsilon` and kept in the final metrics. Noise and rate are the
  same at every step, so a resumed run rebuilds the accountant from the step count alone.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from trl import SFTTrainer

from llm_finetuning.config.privacy import PrivacyConfig
from llm_finetuning.errors import UserError

logger = logging.getLogger(__name__)

EMPTY = "__empty_batch__"


def _opacus() -> Any:
    try:
        import opacus
    except ImportError:
        raise UserError("`training.privacy` needs Opacus: pip install 'llm-finetuning[privacy]'") from None
    return opacus


class _EmptyAware:
    """The collator, except that an empty Poisson batch becomes a marker the training step recognises."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, rows: list[Any]) -> dict[str, Any]:
        return {EMPTY: torch.ones(1)} if not rows else self.collate(rows)


def plan(privacy: PrivacyConfig, examples: int, batch_size: int, epochs: float, max_steps: int | None) -> dict:
    """Sampling rate, steps, delta and the noise multiplier that spends at most `epsilon` over the run."""
    from opacus.accountants.utils import get_noise_multiplier

    if batch_size >= examples:
        raise UserError(
            f"`training.privacy`: `training.per_device_batch_size` ({batch_size}) must be below the number of "
            f"training examples ({examples}); each step samples a fraction of them"
        )
    rate = batch_size / examples
    steps = max_steps or math.ceil(epochs * int(1 / rate))
    delta = privacy.delta if privacy.delta is not None else 1 / (10 * examples)
    noise = get_noise_multiplier(
        target_epsilon=privacy.epsilon, target_delta=delta, sample_rate=rate, steps=steps,
        accountant=privacy.accountant,
    )  # fmt: skip
    return {"sample_rate": rate, "steps": steps, "delta": delta, "noise_multiplier": float(noise)}


class PrivateSFTTrainer(SFTTrainer):
    def __init__(self, *args: Any, privacy: PrivacyConfig, **kwargs: Any) -> None:
        opacus = _opacus()
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise UserError("`training.privacy` runs in one process; drop --nproc (per-process sampling breaks it)")
        self.privacy = privacy
        self.budget = plan(
            privacy,
            len(self.train_dataset),
            self.args.per_device_train_batch_size,
            self.args.num_train_epochs,
            self.args.max_steps if self.args.max_steps > 0 else None,
        )
        accountants = {"rdp": opacus.accountants.RDPAccountant, "prv": opacus.accountants.PRVAccountant}
        self.accountant = accountants[privacy.accountant]()
        self.grad_samples = opacus.GradSampleModule(self.model)  # hooks on the model's own modules
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        logger.info(
            "DP-SGD: sampling rate %.4f, %d steps, noise multiplier %.3f for epsilon %g at delta %.2e",
            self.budget["sample_rate"],
            self.budget["steps"],
            self.budget["noise_multiplier"],
            privacy.epsilon,
            self.budget["delta"],
        )

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(delta=self.budget["delta"])) if self.accountant.history else 0.0

    def get_train_dataloader(self) -> DataLoader:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        dataset = self.train_dataset
        collate = self.data_collator
        if hasattr(dataset, "column_names"):
            dataset = self._remove_unused_columns(dataset, description="training")
        generator = torch.Generator().manual_seed(self.args.seed)
        sampler = UniformWithReplacementSampler(
            num_samples=len(dataset), sample_rate=self.budget["sample_rate"], generator=generator
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=_EmptyAware(collate), num_workers=0)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        from opacus.optimizers import DPOptimizer

        base = super().create_optimizer(*args, **kwargs)
        if isinstance(base, DPOptimizer):
            return base
        self.optimizer = DPOptimizer(
            base,
            noise_multiplier=self.budget["noise_multiplier"],
            max_grad_norm=self.privacy.max_grad_norm,
            expected_batch_size=self.args.per_device_train_batch_size,
            loss_reduction="mean",
        )
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.budget["sample_rate"]))
        return self.optimizer

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        model.train()
        # One Poisson batch per step: nothing carries over (the DP optimizer clears per-example grads and sums).
        self.optimizer.zero_grad(set_to_none=True)
        if EMPTY in inputs:
            for p in self.trainable:  # no example this step; the optimizer still adds the step's noise
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            return torch.zeros((), device=self.args.device)
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = per_example_loss(model, inputs)
        with warnings.catch_warnings():
            # Expected with a frozen base (LoRA): the embeddings' output needs no gradient, Opacus's hooks still run.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        return loss.detach()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            self.grad_samples.remove_hooks()  # the saved and served model is the plain one

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        steps = self.state.global_step
        if steps and sum(h[2] for h in self.accountant.history) != steps:
            # A resumed run: the steps before the checkpoint spent the same noise at the same rate.
            self.accountant.history = [(self.budget["noise_multiplier"], self.budget["sample_rate"], steps)]
        logs["privacy/epsilon"] = self.epsilon()
        if "train_runtime" in logs:  # the end-of-training summary: the whole privacy account
            logs["privacy/delta"] = self.budget["delta"]
            logs["privacy/noise_multiplier"] = self.budget["noise_multiplier"]
            logs["privacy/sample_rate"] = self.budget["sample_rate"]
            logs["privacy/steps"] = float(steps)
        super().log(logs, *args, **kwargs)


def per_example_loss(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """Mean over examples of each example's mean loss on its trained (label != -100) tokens."""
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    logits = outputs.logits[:, :-1].float()
    target = inputs["labels"][:, 1:]
    tokens = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
    mask = target.ne(-100)
    return ((tokens * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
