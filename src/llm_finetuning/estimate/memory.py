"""Peak memory per device: the components, and the moments of a training step at which they coexist.

A step goes through phases, and the peak is the largest of them (summing every component would count
activations and gradients together, which never peak at once when gradients are freed after each step):

  generation   (GRPO/PPO) resident state + KV cache of the sampled sequences + prefill and sampling buffers
  forward      resident state + gradients held over from earlier micro-batches + all saved activations
               + the LM head's forward buffers
  backward     the same with the loss's backward buffers, or the gradients inside the last layer's backward
               (the largest moment for most configs)
  late backward resident state + all gradients + the layer being recomputed (checkpointing) and the
               gradients inside its backward
  optimizer    resident state + all gradients + the optimizer's temporary buffers

"Resident state" is the weights (quantized where configured), the optimizer states, a reference or reward
model, and DDP's gradient buckets. Under ZeRO/FSDP the states, gradients and weights are divided by the number
of devices as the stage says, plus the gathered weights of the layers being computed.

The result is the peak of allocated memory (what `torch.cuda.max_memory_allocated` reports). On a GPU the
device needs more: the CUDA context and the allocator's cached, fragmented blocks (constants below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llm_finetuning.estimate import activations, head
from llm_finetuning.estimate.params import ADAPTER, BASE
from llm_finetuning.estimate.plan import Plan
from llm_finetuning.estimate.shapes import ModelShape

GIB = 2**30
CUDA_CONTEXT_BYTES = 0.5 * GIB  # CUDA context, cuBLAS/cuDNN workspaces: outside torch's allocator
FRAGMENTATION = 0.10  # blocks the caching allocator holds but cannot reuse, as a fraction of the peak
QUANT_BLOCK = 64  # bitsandbytes 4-bit block size: one absmax per 64 weights
DOUBLE_QUANT_BLOCK = 256  # with double quantization, absmaxes are 8-bit with one float32 per 256 of them
OPTIM_8BIT_BLOCK = 256  # bitsandbytes 8-bit optimizers: one float32 absmax per 256 values per state
OPTIM_8BIT_MIN = 4096  # smaller tensors keep 32-bit states


@dataclass
class Breakdown:
    """Memory of one device in bytes: components, phases and the peak."""

    components: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    activations_by_checkpointing: dict[str, float] = field(default_factory=dict)
    """Saved activations with and without gradient checkpointing (whatever the config chose)."""
    overhead: float = 0.0

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    @property
    def peak_allocated(self) -> float:
        return self.phases[self.peak_phase]

    @property
    def total(self) -> float:
        """What the device must hold: the allocated peak plus the context and allocator overhead."""
        return self.peak_allocated + self.overhead


def quantized_weight_bytes(shape: ModelShape, quantization: str, double: bool) -> float:
    """Bytes of the decoder layers' linear weights stored by bitsandbytes (biases stay unquantized)."""
    weights = shape.num_layers * sum(lin.in_features * lin.out_features for lin in shape.linears)
    if quantization == "int8":
        rows = shape.num_layers * sum(lin.out_features for lin in shape.linears)
        return weights + 4 * rows  # int8 values + one float32 scale per output row
    blocks = weights / QUANT_BLOCK
    constants = blocks + 4 * blocks / DOUBLE_QUANT_BLOCK if double else 4 * blocks
    return weights / 2 + constants


def weight_bytes(plan: Plan, shape: ModelShape) -> float:
    """Bytes of a model's own weights in this plan's dtype and quantization."""
    if plan.quantization == "none":
        return shape.total_params * plan.weight_bytes
    quantized = shape.num_layers * sum(lin.in_features * lin.out_features for lin in shape.linears)
    # PEFT's prepare_model_for_kbit_training casts every other weight (embeddings, head, norms) to float32.
    rest = shape.total_params - quantized
    return quantized_weight_bytes(shape, plan.quantization, plan.double_quantization) + 4 * rest


def _kind_bytes(plan: Plan, kind: str) -> int:
    """Bytes per trainable value of each kind: PEFT keeps adapters in float32; copies and base weights keep theirs."""
    if kind == ADAPTER:
        return 4
    return 4 if plan.quantization != "none" else plan.weight_bytes


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def optimizer_states(plan: Plan) -> tuple[float, float]:
    """(state bytes, temporary bytes of the step) for `training.optimizer`.

    AdamW keeps two moments in the parameter's dtype; torch's foreach step (the default on GPUs) adds one
    parameter-sized buffer, the fused one none, and on CPU it runs tensor by tensor. bitsandbytes' 8-bit AdamW
    keeps two 1-byte moments plus a float32 scale per 256 values (32-bit states under 4096 values). Adafactor
    keeps factored second moments (rows + columns) and works on one float32 tensor at a time; SGD keeps nothing.
    """
    name = plan.optimizer
    states, foreach, largest = 0.0, 0.0, 0
    for shape, count, kind in plan.params.trainable:
        n, p = _numel(shape), _kind_bytes(plan, kind)
        largest = max(largest, n)
        if name in ("adamw_torch", "adamw_torch_fused"):
            states += count * 2 * n * p
            foreach += count * n * p
        elif name in ("adamw_8bit", "paged_adamw_8bit"):
            per = 2 * n + 2 * 4 * math.ceil(n / OPTIM_8BIT_BLOCK) if n >= OPTIM_8BIT_MIN else 8 * n
            states += count * per
        elif name == "adafactor":
            factored = n // shape[-1] + n // shape[-2] if len(shape) >= 2 else n
            states += count * p * factored
    if name == "adamw_torch":
        temp = foreach if plan.device == "cuda" else largest * _kind_bytes(plan, BASE)
    elif name == "adafactor":
        temp = 3 * 4 * largest  # float32 gradient, squared gradient and update of the largest tensor
    else:
        temp = 0.0
    return states, temp


def gradient_bytes(plan: Plan) -> float:
    return sum(_numel(s) * n * _kind_bytes(plan, kind) for s, n, kind in plan.params.trainable)


def kv_cache(plan: Plan) -> float:
    gen = plan.generation
    if gen is None:
        return 0.0
    shape = plan.shape
    tokens = gen.sequences * (gen.prompt + gen.completion)
    return tokens * shape.num_layers * 2 * shape.kv_width * plan.attn_bytes


def merged_weight_bytes(plan: Plan) -> float:
    """The merged copies of the LoRA-adapted linear layers that sampling reads (`generation_weights: merged`)."""
    if plan.generation is None or not plan.generation.merged:
        return 0.0
    adapted = sum(lin.in_features * lin.out_features for lin, _ in plan.params.adapted)
    return adapted * plan.shape.num_layers * plan.weight_bytes


def _generation_buffers(plan: Plan) -> float:
    """Prefill of the prompts (one layer at a time, no gradients) and the sampling logits of each step."""
    gen = plan.generation
    assert gen is not None
    shape = plan.shape
    prefill = gen.sequences * gen.prompt * (4 * shape.hidden_size + 3 * shape.intermediate_size) * plan.act_bytes
    return prefill + gen.sequences * shape.vocab_size * 4 * 3


def breakdown(plan: Plan) -> Breakdown:
    """The memory of one device for `plan`."""
    shape, n = plan.shape, plan.gpus
    shard = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3}[plan.sharding]
    out = Breakdown()
    c = out.components

    base = weight_bytes(plan, shape)
    adapter = sum(_numel(s) * k * _kind_bytes(plan, kind) for s, k, kind in plan.params.trainable if kind != BASE)
    grads = gradient_bytes(plan)
    states, step_temp = optimizer_states(plan)
    if plan.value_head:  # PPO's float32 value head: weight, gradient and two Adam states
        adapter += 4 * (shape.hidden_size + 1)
        grads += 4 * (shape.hidden_size + 1)
        states += 8 * (shape.hidden_size + 1)
    reference = base if plan.reference == "copy" else 0.0
    reward = weight_bytes(plan, plan.reward_shape) if plan.reward_shape is not None else 0.0

    gathered = 0.0
    if shard >= 1:
        states, step_temp = states / n, step_temp / n
    if shard >= 2:
        grads /= n
    if shard >= 3:
        base, adapter, reference, reward = base / n, adapter / n, reference / n, reward / n
        # FSDP/ZeRO-3 gathers a layer's full weights to compute it, and prefetches the next one.
        gathered = 2 * shape.layer_params * plan.weight_bytes if n > 1 else 0.0
    buckets = grads if n > 1 and shard == 0 else 0.0  # DDP keeps a flat copy of the gradients for all-reduce
    if plan.offload != "none":  # in CPU memory instead
        states, step_temp = 0.0, 0.0
        if plan.offload == "all":
            base, adapter, grads = 0.0, 0.0, 0.0

    c["weights"] = base
    c["adapter weights"] = adapter
    c["gradients"] = grads
    c["optimizer states"] = states
    c["reference model"] = reference
    c["reward model"] = reward
    c["ddp gradient buckets"] = buckets
    c["gathered layer weights"] = gathered
    merged = merged_weight_bytes(plan)
    if merged:
        c["merged generation weights"] = merged
    resident = base + adapter + states + reference + reward + buckets + gathered + merged

    saved = activations.saved_activations(plan, plan.checkpointing)
    head_kept, forward_extra, backward_extra = head.head_and_loss(plan)
    c["activations"] = saved
    c["recomputed layer"] = activations.recomputed_layer(plan)
    c["logits and loss"] = head_kept + max(forward_extra, backward_extra)
    out.activations_by_checkpointing = {
        "without": activations.saved_activations(plan, False),
        "with": activations.saved_activations(plan, True) + plan.tokens * activations.layer_bytes_per_token(plan),
    }
    # Float32 weights under 16-bit autocast: the 16-bit copy of each matmul weight lives until its backward.
    casts, casts_backward, layer_casts = activations.weight_copies(plan)
    c["autocast weight copies"] = casts
    c["optimizer step buffers"] = step_temp
    held = grads if plan.accumulation > 1 else 0.0  # gradients of earlier micro-batches

    out.phases["forward"] = resident + held + saved + head_kept + forward_extra + casts
    workspace = activations.backward_workspace(plan)
    out.phases["backward"] = resident + held + saved + head_kept + max(backward_extra, workspace) + casts_backward
    # A tied embedding's gradient from the lookup is built whole, then added to the LM head's.
    tied = shape.embedding_params * _kind_bytes(plan, BASE) if shape.tie_word_embeddings else 0.0
    tied = tied if plan.params.embedding_trains else 0.0
    out.phases["late backward"] = resident + grads + c["recomputed layer"] + workspace + tied + layer_casts
    out.phases["optimizer step"] = resident + grads + step_temp
    if plan.generation is not None:
        c["kv cache"] = kv_cache(plan)
        out.phases["generation"] = resident + c["kv cache"] + _generation_buffers(plan)
    if plan.device == "cuda":
        out.overhead = CUDA_CONTEXT_BYTES + FRAGMENTATION * max(out.phases.values())
    return out
