"""Activation memory: what autograd keeps between the forward and the backward pass.

The count follows the tensors each operation of a transformers decoder layer saves for its backward (in the
spirit of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", adapted to
fused attention kernels, which never store the seq x seq score matrix, to gated MLPs and to RMSNorm computed in
float32), checked tensor by tensor against autograd's saved tensors. Per token and decoder layer, with widths
h (hidden), q (query heads x head_dim), kv, i (MLP):

  norm              4*h (its float32 input) + 4 (1/rms) [+ r*h normalised value when the norm weight trains];
                    Liger's RMSNorm: its input r*h + 4
  norm output       kept once when a reading linear keeps the tensor itself; one 16-bit copy per reading linear
                    when float32 weights train under autocast; nothing when no reader keeps it (frozen base
                    layers keep only their weight; LoRA under autocast, with dropout or a cast keeps its own copy)
  attention         fused kernels (sdpa flash/efficient, flash-attn): queries, keys, values (kv widened to q when
                    the grouped heads are repeated), the output (already in o_proj's layout) and 4 bytes of
                    log-sum-exp per head; sdpa's math kernel (short examples on CPU): float32 queries, keys,
                    values and scores, and the output as o_proj's input
  gated MLP         gate, act(gate), up (Liger: gate and up) and the product as down_proj's input
  LoRA (per layer)  lora_A's input (its autocast copy, PEFT's float32 copy, or the dropout output) and, with
                    dropout, the mask (float32 on CPU, 1 byte on CUDA); lora_B keeps r values
  eager attention   the float32 softmax (and its 16-bit copy) over seq keys per head

With gradient checkpointing only each layer's input (r*h per token) is kept, and one layer's activations
are rebuilt at a time during the backward pass.
"""

from __future__ import annotations

from llm_finetuning.estimate.plan import Plan
from llm_finetuning.estimate.shapes import Linear, Norm

# Which linear layers read each norm's output: its output is kept for them.
ATTN_INPUTS = ("q_proj", "k_proj", "v_proj", "qkv_proj")
MLP_INPUTS = ("gate_proj", "up_proj", "gate_up_proj", "fc1")


def _norm_consumers(plan: Plan, name: str) -> int:
    names = {lin.name for lin in plan.shape.linears}
    norms = {n.name for n in plan.shape.norms}
    sandwich = "pre_feedforward_layernorm" in norms
    if name == "input_layernorm":  # Phi's parallel block feeds the MLP from the same norm
        readers = ATTN_INPUTS + (MLP_INPUTS if "post_attention_layernorm" not in norms else ())
    elif name == "post_attention_layernorm" and not sandwich or name == "pre_feedforward_layernorm":
        readers = MLP_INPUTS
    else:  # post-norms feed a residual add; q/k norms feed the attention (counted there)
        return 0
    return sum(1 for n in readers if n in names)


def _input_bytes(plan: Plan, linear: Linear) -> int:
    """Bytes per value of a linear layer's input: norm outputs, the attention output, or the MLP product."""
    if linear.name in ATTN_INPUTS + MLP_INPUTS:
        return plan.residual_bytes
    if linear.name in ("o_proj", "dense"):
        return plan.attn_bytes
    return plan.linear_out_bytes


def readers_keep(plan: Plan, value_bytes: int) -> bool:
    """Whether the linear layers reading a tensor of `value_bytes` per value keep that very tensor (counted once)."""
    if plan.base_linears_train:  # autocast casts an input of another dtype: each layer keeps its own copy instead
        return not plan.autocast or value_bytes == plan.act_bytes
    if plan.params.adapted:  # frozen base layers keep only their weight; lora_A keeps the input if nothing casts it
        return not plan.autocast and plan.lora_dropout == 0 and value_bytes == 4
    return True  # other adapters: counted as kept (an upper bound)


def _norm_bytes(plan: Plan, norm: Norm) -> float:
    """Per token: what a normalisation layer keeps for its own backward."""
    rows = norm.width // norm.size  # q/k norms normalise each head separately
    if plan.liger and not norm.bias:
        return plan.residual_bytes * norm.width + 4 * rows
    return norm.width * (4 + (plan.residual_bytes if plan.params.norms_train else 0)) + 4 * rows


def lora_bytes(plan: Plan, linear: Linear, rank: int) -> float:
    """Per token: what one LoRA-adapted linear layer keeps besides the base layer."""
    dropout = plan.lora_dropout > 0
    if plan.autocast and plan.act_bytes < 4:
        kept = plan.act_bytes  # lora_A's autocast copy of its (float32) input
    elif dropout:
        kept = 4  # the dropped-out float32 input that lora_A reads
    else:
        kept = 0 if _input_bytes(plan, linear) == 4 else 4  # the input itself (counted with it) or PEFT's cast
    # torch's dropout keeps a noise tensor in the input's dtype (PEFT's float32) on CPU, a 1-byte mask on CUDA.
    mask = (4 if plan.device == "cpu" else 1) if dropout else 0
    rank_bytes = plan.act_bytes if plan.autocast else 4
    return linear.in_features * (kept + mask) + rank * rank_bytes


def attention_bytes(plan: Plan) -> float:
    """Per token: what one layer's attention keeps (queries, keys, values, output; scores where kept)."""
    shape, att = plan.shape, plan.attn_bytes
    q, kv = shape.q_width, shape.q_width if plan.expanded_kv else shape.kv_width
    output = att * q if readers_keep(plan, att) else 0.0  # o_proj's input, where nothing else keeps it
    if plan.math_attention:  # float32 copies of q, k, v and the softmax over the example's positions
        return 4 * (q + 2 * kv) + 4 * shape.num_heads * plan.math_attention + output
    if plan.attention == "eager":
        a = plan.act_bytes
        return att * (q + 2 * kv) + shape.num_heads * plan.seq_len * (4 + (a if a < 4 else 0)) + output
    return att * (2 * q + 2 * kv) + 4 * shape.num_heads  # the kernel keeps its output and log-sum-exp


def layer_bytes_per_token(plan: Plan) -> float:
    """Bytes one decoder layer keeps per token for its backward pass (no checkpointing)."""
    shape = plan.shape
    r, a, o = plan.residual_bytes, plan.act_bytes, plan.linear_out_bytes
    total = 0.0
    for norm in shape.norms:
        total += _norm_bytes(plan, norm)
        readers = _norm_consumers(plan, norm.name)
        if readers == 0:
            continue
        if plan.cast_copies:
            total += readers * a * norm.width
        elif plan.quantization == "none" or plan.params.adapted:
            total += r * norm.width if readers_keep(plan, r) else 0.0
    total += attention_bytes(plan)
    inter = shape.intermediate_size
    if shape.gated_mlp:
        total += (2 if plan.liger else 3) * inter * o  # gate, act(gate), up (Liger recomputes the activation)
    else:
        total += inter * o  # fc1's output, the activation's input
    total += inter * o if readers_keep(plan, o) else 0.0  # the product (activation) that down_proj/fc2 reads
    total += sum(lora_bytes(plan, lin, rank) for lin, rank in plan.params.adapted)
    return total


def saved_activations(plan: Plan, checkpointing: bool) -> float:
    """Bytes kept at the start of the backward pass by the decoder layers and the final norm."""
    shape = plan.shape
    r = plan.residual_bytes
    if checkpointing:
        layers = shape.num_layers * r * shape.hidden_size  # each layer's input only
    else:
        layers = shape.num_layers * layer_bytes_per_token(plan)
    rotary = 2 * shape.head_dim * r  # cos and sin, shared by every layer's attention
    return plan.tokens * (layers + _norm_bytes(plan, shape.final_norm) + rotary)


def backward_workspace(plan: Plan) -> float:
    """Bytes of gradients alive inside one layer's backward: those of the MLP's intermediate tensors (three at
    a time) and of the layer's input and output."""
    shape = plan.shape
    return plan.tokens * (
        3 * shape.intermediate_size * plan.linear_out_bytes + 2 * shape.hidden_size * plan.residual_bytes
    )


def recomputed_layer(plan: Plan) -> float:
    """Bytes of the one layer rebuilt at a time in the backward pass under gradient checkpointing."""
    return plan.tokens * layer_bytes_per_token(plan) if plan.checkpointing else 0.0


def weight_copies(plan: Plan) -> tuple[float, float, float]:
    """16-bit copies autocast makes of float32 weights and keeps: (at the end of the forward, at the start of the
    backward, one decoder layer's).

    A matmul keeps its weight's copy for the input gradient; weights that train stay in autocast's cache for the
    whole forward, frozen ones only while a matmul keeps them (one layer at a time under checkpointing). The LM
    head's copy is counted here when the head is one matmul (`plain`, `full`); TRL's fused head casts a tile of it
    at a time, counted with the head (and, as before, here with float32 weights that train).
    """
    if not plan.autocast or plan.act_bytes == 4:
        return 0.0, 0.0, 0.0
    shape, a = plan.shape, plan.act_bytes
    layer = shape.layer_linear_params * a if plan.weight_bytes == 4 and plan.quantization == "none" else 0.0
    # LoRA's float32 matrices train: autocast's cache keeps their copies through the forward
    adapters = shape.num_layers * a * sum(r * (lin.in_features + lin.out_features) for lin, r in plan.params.adapted)
    head = 0.0
    if shape.head == "causal_lm" and plan.head_weight_bytes != a:
        if plan.loss in ("plain", "full") or (plan.loss == "fused" and plan.cast_copies):
            head = shape.vocab_size * shape.hidden_size * a
    every = shape.num_layers * layer
    if not plan.checkpointing:
        return every + adapters + head, every + adapters + head, layer
    cached = every if plan.base_linears_train else 0.0
    return cached + adapters + head, layer + head, layer
