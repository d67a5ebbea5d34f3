"""The PPO loop: sample, score, estimate advantages, then several epochs of clipped updates per rollout."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import PeftModel
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_finetuning.methods.ppo import checkpoint, core
from llm_finetuning.methods.ppo.config import PPOOptions
from llm_finetuning.methods.ppo.prompt_order import PromptOrder
from llm_finetuning.methods.ppo.reference import ReferencePolicy
from llm_finetuning.methods.ppo.rewards import RewardFn, check_scores
from llm_finetuning.methods.ppo.rollout import Prompt, Rollout, eos_token_ids, pad_token_id, sample
from llm_finetuning.methods.ppo.value_head import PolicyWithValueHead, save_value_head

logger = logging.getLogger(__name__)
# Stats that measure wall-clock time: they differ between two otherwise identical runs.
WALL_CLOCK_STATS = frozenset({"step_time_s", "time/generation", "time/rewards", "time/log_probs", "time/train"})

OPTIONS_FILE = "ppo_options.yaml"
LogFn = Callable[[dict[str, float]], None]


class PPOTrainer:
    """PPO for a causal LM against a reward function, with a KL penalty to a reference policy.

    `policy` is a `PeftModel` (LoRA/DoRA; its adapter-disabled self is the reference), a plain model (pass a
    frozen `ref_model`, see `reference.frozen_copy`), or either already wrapped in `PolicyWithValueHead`
    (e.g. with a value head loaded from a previous run). Without `optimizer`, AdamW over every trainable
    parameter of the policy and the value head is built from `options`; a caller's optimizer must include the
    value head. `lr_scheduler` is stepped after every optimizer step. `log_fn` receives each step's stats.

    Dropout modules of the policy are switched off: with dropout, the ratio between new and old probabilities
    would measure noise as well as policy change. The global torch seed is set from `options.seed`, because
    sampling in `generate` draws from it.
    """

    def __init__(
        self,
        policy: PreTrainedModel | PeftModel | PolicyWithValueHead,
        tokenizer: PreTrainedTokenizerBase,
        options: PPOOptions,
        reward_fn: RewardFn,
        optimizer: torch.optim.Optimizer | None = None,
        ref_model: PreTrainedModel | None = None,
        lr_scheduler: LRScheduler | None = None,
        log_fn: LogFn | None = None,
    ) -> None:
        self.model = policy if isinstance(policy, PolicyWithValueHead) else PolicyWithValueHead(policy)
        self.policy = self.model.policy
        if isinstance(self.policy, PeftModel) and self.policy.active_peft_config.is_prompt_learning:
            raise ValueError(
                "PPO supports weight adapters (LoRA, DoRA, IA3) and full training, not prompt-learning adapters "
                "(prompt, prefix, p-tuning), whose virtual tokens shift the positions the value head reads"
            )
        self.tokenizer = tokenizer
        self.options = options
        self.reward_fn = reward_fn
        self.reference = ReferencePolicy(self.policy, ref_model)
        self.kl_controller: core.FixedKLController | core.AdaptiveKLController = (
            core.AdaptiveKLController(options.kl_coef, options.target_kl, options.horizon)
            if options.adaptive_kl
            else core.FixedKLController(options.kl_coef)
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.AdamW(
            self.trainable, lr=options.learning_rate, weight_decay=options.weight_decay
        )
        _check_optimizer_covers(self.optimizer, self.model.value_head)
        self.lr_scheduler = lr_scheduler
        self.log_fn = log_fn
        self.eos_ids = eos_token_ids(tokenizer, self.policy)
        self.pad_id = pad_token_id(tokenizer)
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        _disable_dropout(self.model)
        torch.manual_seed(options.seed)
        # Own generators for mini-batch and prompt order, so neither depends on how much sampling drew.
        self.batch_order = torch.Generator().manual_seed(options.seed)
        self.prompt_order = PromptOrder(options.seed)

    # ------------------------------------------------------------------------------------------ one step
    def step(self, prompts: Sequence[Prompt], **extras: Sequence[Any]) -> dict[str, float]:
        """One PPO step on these prompts (each sampled `num_generations` times); returns the step's stats.

        `extras` are passed to the reward function, one sequence per name aligned with `prompts`.
        """
        started = time.perf_counter()
        opts = self.options
        prompts, extras = _repeat(prompts, extras, opts.num_generations)
        self.model.eval()
        rollout = sample(self.policy, self.tokenizer, prompts, opts, self.eos_ids)
        generated = time.perf_counter()
        scores = check_scores(self.reward_fn(rollout.prompts, rollout.completions, **extras), len(rollout))
        rewarded = time.perf_counter()
        mask = rollout.response_mask
        score = torch.tensor(scores, dtype=torch.float32, device=mask.device)
        if opts.missing_eos_penalty is not None:
            score = score - opts.missing_eos_penalty * (~rollout.ended).float()

        old_logprobs, old_values, ref_logprobs, entropy = self._score(rollout)
        scored = time.perf_counter()
        kl_coef = self.kl_controller.value
        rewards = core.per_token_rewards(score, old_logprobs, ref_logprobs, mask, kl_coef, opts.kl_estimator)
        if opts.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.compute_gae(rewards, old_values, mask, opts.gamma, opts.lam)
        if opts.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask)

        train_stats = self._optimize(rollout, old_logprobs, old_values, advantages, returns)
        trained = time.perf_counter()
        # KL per completion (summed over its tokens): the quantity the adaptive controller's target refers to.
        kl = (core.kl_penalty(old_logprobs, ref_logprobs, opts.kl_estimator) * mask).sum(dim=1).mean().item()
        self.kl_controller.update(kl, len(rollout))
        self.global_step += 1
        stats = {
            "step": float(self.global_step),
            "reward": score.mean().item(),
            "reward_std": score.std().item() if len(score) > 1 else 0.0,
            "kl": kl,
            "kl_coef": kl_coef,
            "non_score_reward": (-kl_coef * kl),
            "entropy": core.masked_mean(entropy, mask).item(),
            "response_length": mask.sum(dim=1).float().mean().item(),
            "ended_fraction": rollout.ended.float().mean().item(),
            "value_mean": core.masked_mean(old_values, mask).item(),
            "return_mean": core.masked_mean(returns, mask).item(),
            **train_stats,
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
            "step_time_s": time.perf_counter() - started,
            # Where the step's time went: what to speed up first.
            "time/generation": generated - started,
            "time/rewards": rewarded - generated,
            "time/log_probs": scored - rewarded,
            "time/train": trained - scored,
        }
        self.history.append(stats)
        logger.info(
            "ppo step %d: reward %.4f kl %.4f kl_coef %.4f policy_loss %.4f value_loss %.4f clipfrac %.3f",
            self.global_step,
            stats["reward"],
            stats["kl"],
            kl_coef,
            stats["policy_loss"],
            stats["value_loss"],
            stats["policy_clipfrac"],
        )
        if self.log_fn is not None:
            self.log_fn(stats)
        return stats

    def _completion_pass(self, rollout: Rollout, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Policy logits (at the sampling temperature) and values at the positions that predict completion
        tokens: position P - 1 + t predicts completion token t and holds the value of the state before it."""
        length = rollout.response_ids.shape[1]
        logits, values = self.model(rollout.input_ids[rows], rollout.attention_mask[rows], logits_to_keep=length + 1)
        return logits[:, :-1] / self.options.temperature, values[:, -length - 1 : -1]

    @torch.no_grad()
    def _score(self, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Old log-probs, old values, reference log-probs and entropies of the rollout, in mini-batch chunks."""
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        length = rollout.response_ids.shape[1]
        for rows in torch.arange(len(rollout)).split(self.options.mini_batch_size):
            tokens = rollout.response_ids[rows]
            logits, values = self._completion_pass(rollout, rows)
            ref_logits = self.reference.logits(
                rollout.input_ids[rows], rollout.attention_mask[rows], logits_to_keep=length + 1
            )
            ref_logits = ref_logits[:, :-1] / self.options.temperature
            parts.append(
                (
                    core.logprobs_of(logits, tokens),
                    values,
                    core.logprobs_of(ref_logits, tokens),
                    core.entropy_from_logits(logits),
                )
            )
        mask = rollout.response_mask.float()
        # Zero outside the mask, so GAE never bootstraps from a padding position's value.
        return tuple(torch.cat(column) * mask for column in zip(*parts, strict=True))  # type: ignore[return-value]

    def _optimize(
        self, rollout: Rollout, old_logprobs: Tensor, old_values: Tensor, advantages: Tensor, returns: Tensor
    ) -> dict[str, float]:
        opts = self.options
        mask = rollout.response_mask
        self.model.train()  # dropout is off; train mode keeps gradient checkpointing working
        totals: dict[str, float] = {}
        updates = 0
        for _ in range(opts.ppo_epochs):
            order = torch.randperm(len(rollout), generator=self.batch_order)
            for rows in order.split(opts.mini_batch_size):
                logits, values = self._completion_pass(rollout, rows)
                new_logprobs = core.logprobs_of(logits, rollout.response_ids[rows])
                p_loss, p_clip, approx_kl = core.policy_loss(
                    new_logprobs, old_logprobs[rows], advantages[rows], mask[rows], opts.clip_range
                )
                v_loss, v_clip = core.value_loss(
                    values, old_values[rows], returns[rows], mask[rows], opts.clip_range_value
                )
                loss = p_loss + opts.value_loss_coef * v_loss
                if opts.entropy_coef > 0:
                    loss = loss - opts.entropy_coef * core.masked_mean(core.entropy_from_logits(logits), mask[rows])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = _clip_gradients(self.trainable, opts.max_grad_norm)
                self.optimizer.step()
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step()
                step_stats = {
                    "loss": loss.item(),
                    "policy_loss": p_loss.item(),
                    "value_loss": v_loss.item(),
                    "policy_clipfrac": p_clip.item(),
                    "value_clipfrac": v_clip.item(),
                    "approx_kl": approx_kl.item(),
                    "grad_norm": grad_norm,
                }
                for key, value in step_stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        self.model.eval()
        return {key: value / updates for key, value in totals.items()}

    # ------------------------------------------------------------------------------------------ training
    def train(
        self,
        prompt_dataset: Sequence[Any],
        steps: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Run `steps` PPO steps (default: until `global_step` reaches `options.total_steps`) on `batch_size`
        prompts each.

        Rows are prompts (text or chat messages) or mappings with a `prompt` key whose other keys reach the reward
        function as extras. Prompts are drawn in a seeded random order, reshuffled after each pass over the data;
        the position carries over from one call to the next (and through `save_checkpoint`/`load_checkpoint`).
        `on_step` receives each step's stats once the step is complete (e.g. to write a checkpoint); then
        `should_stop` is asked (e.g. a signal handler's flag). Returns the stats of these steps.
        """
        if len(prompt_dataset) == 0:
            raise ValueError("the prompt dataset is empty")
        first = len(self.history)
        count = steps if steps is not None else max(0, self.options.total_steps - self.global_step)
        for _ in range(count):
            indices = self.prompt_order.take(self.options.batch_size, len(prompt_dataset))
            prompts, extras = _split_rows([prompt_dataset[i] for i in indices])
            stats = self.step(prompts, **extras)
            if on_step is not None:
                on_step(stats)
            if should_stop is not None and should_stop():
                logger.info("PPO stopped on request after step %d", self.global_step)
                break
        return self.history[first:]

    def save(self, directory: str | Path) -> Path:
        """Write the policy (adapter or full model), tokenizer, value head and options to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        save_value_head(self.model.value_head, directory)
        with (directory / OPTIONS_FILE).open("w", encoding="utf-8") as handle:
            yaml.safe_dump(self.options.model_dump(mode="json"), handle, sort_keys=False)
        logger.info("Saved the PPO policy, value head and options to %s", directory)
        return directory

    def save_checkpoint(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write everything needed to continue this run exactly (see `checkpoint`) into `directory`."""
        return checkpoint.save_checkpoint(self, directory, extra)

    def load_checkpoint(self, directory: str | Path, dataset_size: int | None = None) -> dict[str, Any]:
        """Continue from a `save_checkpoint` folder; refused (`checkpoint.CheckpointMismatch`) when it was written
        with other options or trainable parameters, or for another number of prompts. Returns its `extra`."""
        return checkpoint.load_checkpoint(self, directory, dataset_size)


def _repeat(
    prompts: Sequence[Prompt], extras: dict[str, Sequence[Any]], times: int
) -> tuple[list[Prompt], dict[str, list[Any]]]:
    """Each prompt (and its extras) `times` times in a row: the rollout's completions, grouped by prompt."""
    if not prompts:
        raise ValueError("PPO step needs at least one prompt")
    for name, values in extras.items():
        if len(values) != len(prompts):
            raise ValueError(f"reward extra `{name}` has {len(values)} values for {len(prompts)} prompts")
    repeated = [prompt for prompt in prompts for _ in range(times)]
    return repeated, {name: [v for v in values for _ in range(times)] for name, values in extras.items()}


def _split_rows(rows: list[Any]) -> tuple[list[Prompt], dict[str, list[Any]]]:
    """Prompts and per-column extras from dataset rows (prompts, or mappings with a `prompt` key)."""
    if not all(isinstance(row, dict) for row in rows):
        return rows, {}
    missing = [i for i, row in enumerate(rows) if "prompt" not in row]
    if missing:
        raise ValueError(f"prompt dataset rows need a `prompt` key; rows {missing[:5]} of this batch lack it")
    columns = sorted({key for row in rows for key in row} - {"prompt"})
    return [row["prompt"] for row in rows], {key: [row.get(key) for row in rows] for key in columns}


def _clip_gradients(parameters: list[nn.Parameter], max_norm: float | None) -> float:
    if max_norm is None:
        norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
        return torch.stack(norms).norm().item() if norms else 0.0
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm).item()


def _disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _check_optimizer_covers(optimizer: torch.optim.Optimizer, value_head: nn.Module) -> None:
    covered = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if any(id(p) not in covered for p in value_head.parameters()):
        raise ValueError(
            "the optimizer does not train the value head: wrap the policy in PolicyWithValueHead first and give "
            "the optimizer its trainable parameters (or let the trainer build the optimizer)"
        )
