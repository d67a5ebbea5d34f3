"""Tokens per step, time per step and epoch, and cost, from FLOP counts and an assumed GPU utilisation.

FLOPs per token and decoder stack, with B the matmul parameters of the layers and A the attention's own work
(2 x seq x query width per layer for the causal QK^T and AV products):
  forward 2B + A; backward 2B + 2A for the input gradients (needed through frozen layers too) plus 2B' for
  the weight gradients of the B' trainable matmul parameters; checkpointing repeats the forward.
Full fine-tuning is thus ~6N per token, LoRA ~4N. The LM head adds 2 x vocab x hidden per scored position and
pass (the fused head recomputes it in the backward). Passes without gradients (reference model, old
log-probs) cost a forward. Sampling in GRPO/PPO is bounded by memory bandwidth: each new token reads the
weights and the KV cache once for all sequences sampled together; transformers' `generate` adds a fixed
cost per layer and token (kernel launches from Python).

Time = FLOPs / (peak TFLOP/s x utilisation), bandwidth-bound generation at `BANDWIDTH_UTILISATION`.
Communication between devices is not modelled (data parallel steps are assumed to overlap it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_finetuning.estimate.gpus import GPU
from llm_finetuning.estimate.memory import weight_bytes
from llm_finetuning.estimate.params import ADAPTER, BASE
from llm_finetuning.estimate.plan import Plan

BANDWIDTH_UTILISATION = 0.5  # fraction of peak memory bandwidth that token-by-token sampling reaches
# transformers' `generate` launches a dozen kernels per decoder layer and token from Python (no CUDA graphs):
# an assumed fixed cost per layer and generated token, which dominates sampling with small models.
DECODE_LAYER_OVERHEAD_S = 0.25e-3


@dataclass
class Throughput:
    """Time and cost of the run on the chosen GPU."""

    tokens_per_step: int
    """Tokens of the sequences that train in one optimizer step, over all devices."""
    flops_per_step: float
    """FLOPs one device computes per optimizer step."""
    seconds_per_step: float
    generation_seconds_per_step: float
    utilization: float
    steps_per_epoch: int | None
    examples: int | None
    total_steps: int | None
    usd_per_hour: float
    """Price of all the devices together."""

    @property
    def seconds_per_epoch(self) -> float | None:
        return None if self.steps_per_epoch is None else self.steps_per_epoch * self.seconds_per_step

    @property
    def seconds_per_1k_steps(self) -> float:
        return 1000 * self.seconds_per_step

    def cost(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds / 3600 * self.usd_per_hour


def flops_per_token(plan: Plan, grad: bool = True) -> tuple[float, float]:
    """(FLOPs per token of the decoder stack, FLOPs per scored position of the head) for one pass."""
    shape = plan.shape
    body = shape.num_layers * shape.layer_linear_params
    attention = 2 * plan.seq_len * shape.q_width * shape.num_layers
    head = 2 * shape.hidden_size * (shape.vocab_size if plan.loss != "score" else 1)
    if not grad:
        return 2 * body + attention, head
    adapters = plan.params.count(ADAPTER)
    trainable_body = min(body, plan.params.count(BASE))  # base matmul weights that train (full, freeze)
    stack = (2 * body + attention) + (2 * body + 2 * attention) + 2 * trainable_body + 6 * adapters
    if plan.checkpointing:
        stack += 2 * body + attention
    head_passes = 2 + (1 if plan.loss == "fused" else 0) + (1 if plan.params.head_trains else 0)
    return stack, head * head_passes


def _step_flops(plan: Plan) -> float:
    """FLOPs one device computes in one optimizer step (sampling excluded)."""
    stack, head = flops_per_token(plan)
    stack_ng, head_ng = flops_per_token(plan, grad=False)
    micro = plan.sequences * (plan.seq_len * stack + plan.scored * head)
    forward_only = plan.sequences * (plan.seq_len * stack_ng + plan.scored * head_ng)
    extra = 0.0
    if plan.reference in ("copy", "adapter"):
        extra += forward_only
    if plan.method == "kto":
        extra += forward_only  # the KL estimate on mismatched pairs
    if plan.method == "ppo":
        assert plan.generation is not None
        minibatches = plan.generation.sequences / plan.sequences
        return minibatches * (plan.ppo_epochs * micro + plan.ppo_passes * forward_only)
    return plan.accumulation * (micro + extra)


def _generation_seconds(plan: Plan, gpu: GPU, utilization: float) -> float:
    gen = plan.generation
    if gen is None:
        return 0.0
    shape = plan.shape
    stack_ng, head_ng = flops_per_token(plan, grad=False)
    prefill = gen.sequences * gen.prompt * stack_ng / (gpu.tflops * 1e12 * utilization)
    weights = weight_bytes(plan, shape)
    kv_per_token = shape.num_layers * 2 * shape.kv_width * plan.attn_bytes
    for_flops = gen.sequences * (stack_ng + head_ng) / (gpu.tflops * 1e12 * utilization)
    kv_read = gen.sequences * kv_per_token * (gen.prompt + gen.completion / 2)
    per_token = max((weights + kv_read) / (gpu.bandwidth_tbs * 1e12 * BANDWIDTH_UTILISATION), for_flops)
    per_token += DECODE_LAYER_OVERHEAD_S * shape.num_layers
    return prefill + gen.completion * per_token


def examples_per_step(plan: Plan, avg_tokens: int | None, packing: bool, num_generations: int | None) -> float:
    """Training examples (rows) one device consumes per optimizer step."""
    if plan.method == "ppo":
        return plan.batch
    if plan.method == "grpo":
        return plan.batch * plan.accumulation / (num_generations or 1)
    per_sequence = 1.0
    if (packing or plan.method == "pretrain") and avg_tokens:
        per_sequence = max(1.0, plan.seq_len / avg_tokens)
    return plan.batch * plan.accumulation * per_sequence


def throughput(
    plan: Plan,
    gpu: GPU,
    *,
    utilization: float,
    examples: int | None,
    epochs: float,
    max_steps: int | None,
    per_step_examples: float,
) -> Throughput:
    """Time and cost of one step, one epoch (when the number of examples is known) and the configured run."""
    flops = _step_flops(plan)
    generation = _generation_seconds(plan, gpu, utilization)
    seconds = flops / (gpu.tflops * 1e12 * utilization) + generation
    if plan.method == "ppo":
        assert plan.generation is not None
        tokens = plan.generation.sequences * plan.seq_len * plan.gpus
    else:
        tokens = plan.sequences * plan.seq_len * plan.accumulation * plan.gpus
    steps = math.ceil(examples / (per_step_examples * plan.gpus)) if examples else None
    total = max_steps or (math.ceil(steps * epochs) if steps else None)
    return Throughput(
        tokens_per_step=tokens,
        flops_per_step=flops,
        seconds_per_step=seconds,
        generation_seconds_per_step=generation,
        utilization=utilization,
        steps_per_epoch=steps,
        examples=examples,
        total_steps=total,
        usd_per_hour=gpu.usd_per_hour * plan.gpus,
    )
