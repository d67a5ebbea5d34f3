"""Reward models, DPO, ORPO and KTO: config -> TRL trainer on preference or unpaired records.

The records are TRL's conversational shapes (prompt/chosen/rejected, prompt/completion/label); TRL applies the
tokenizer's chat template (installed by `prepare_tokenizer`) and masks the prompt. With a PEFT adapter, DPO and
KTO take the reference model as the base with the adapter disabled, so no second copy sits in memory.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import DPOConfig, KTOConfig, RewardConfig, RewardTrainer

# ORPO lives in trl.experimental; the pinned version is tested here (tests/unit/test_preference_losses.py).
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from llm_finetuning.config.schema import Config
from llm_finetuning.data.pipeline import PreparedData, prepare_records
from llm_finetuning.methods.common import apply_extra, training_arguments
from llm_finetuning.methods.reference_cache import CachedDPOTrainer, CachedKTOTrainer
from llm_finetuning.runs.rundir import RunDir

KIND = {"reward": "preference", "dpo": "preference", "orpo": "preference", "kto": "unpaired"}


def prepare(config: Config, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    # TRL's reward trainer drops pairs longer than max_length instead of truncating them: drop (and count) them
    # here, so the count is ours and reported.
    drop_long = config.method.name == "reward"
    return prepare_records(config.data, KIND[config.method.name], config.training.seed, tokenizer, drop_long)


class CompletionOnlyORPOTrainer(ORPOTrainer):
    """ORPO with the paper's SFT term: the NLL of the chosen response given the prompt.

    TRL's experimental ORPO computes that NLL over the prompt tokens as well, which trains the model to
    generate prompts; the log-odds term already uses completion tokens only. Here the NLL is recomputed from the
    same forward pass with the prompt masked, so the loss is Hong et al. 2024, eq. 6, as written.
    """

    def concatenated_forward(self, model: Any, batch: dict[str, Any]) -> tuple:
        outputs = super().concatenated_forward(model, batch)
        chosen_logits = outputs[2]  # already shifted: position t predicts token t + 1
        concatenated = self.concatenated_inputs(
            batch,
            is_encoder_decoder=self.is_encoder_decoder,
            padding_value=self.padding_value,
            device=self.accelerator.device,
        )
        labels = concatenated["concatenated_labels"][: chosen_logits.shape[0], 1:]
        nll = F.cross_entropy(chosen_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return (*outputs[:4], nll, *outputs[5:])


def _options(config: Config) -> tuple[type, type, dict[str, Any]]:
    method = config.method
    if method.name == "reward":
        return RewardConfig, RewardTrainer, {"center_rewards_coefficient": method.center_rewards_coefficient}
    if method.name == "dpo":
        options = {"beta": method.beta, "loss_type": [method.loss_type]}
        return DPOConfig, CachedDPOTrainer, {**options, "precompute_ref_log_probs": method.precompute_ref_log_probs}
    if method.name == "orpo":
        return ORPOConfig, CompletionOnlyORPOTrainer, {"beta": method.beta}
    options = {
        "beta": method.beta,
        "desirable_weight": method.desirable_weight,
        "undesirable_weight": method.undesirable_weight,
        "precompute_ref_log_probs": method.precompute_ref_log_probs,
    }
    return KTOConfig, CachedKTOTrainer, options


def build_trainer(
    config: Config,
    run: RunDir,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    callbacks: list[TrainerCallback],
) -> Any:
    config_class, trainer_class, options = _options(config)
    arguments = training_arguments(config, run, has_eval=data.eval is not None)
    arguments.update(options, max_length=config.data.max_length)
    args = config_class(**apply_extra(arguments, config.training.extra, config_class))
    extra: dict[str, Any] = {}
    if config.method.name in ("dpo", "kto") and not isinstance(model, PeftModel):
        if not config.method.precompute_ref_log_probs:
            # Full or freeze tuning: the reference is a frozen copy of the starting model, copied in memory so it
            # matches it exactly (grown vocabulary included) rather than reloaded from disk or the hub.
            extra["ref_model"] = _frozen_copy(model)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    _reference_is_the_disabled_adapter(trainer, config.adapter)
    return trainer


def _frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def _reference_is_the_disabled_adapter(trainer: Any, adapter: Any) -> None:
    """TRL copies a PEFT model's adapter as a frozen "ref" adapter, assuming it may be pretrained. Our adapters
    are fresh; where a fresh adapter leaves the model unchanged (LoRA/DoRA with B = 0, IA3 with unit scales), the
    base with the adapter disabled is exactly the initial policy, so drop the copy and let TRL fall back to
    disabling the adapter. PiSSA/OLoRA (base rewritten) and prompt methods (virtual tokens) keep the copy."""
    model = trainer.model
    if not isinstance(model, PeftModel) or "ref" not in model.peft_config:
        return
    identity = adapter.method == "ia3" or (
        adapter.method in ("lora", "dora") and adapter.init in ("default", "gaussian")
    )
    if identity:
        model.delete_adapter("ref")
        model.set_adapter("default")
