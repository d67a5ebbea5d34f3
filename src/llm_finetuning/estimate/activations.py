"""Activation memory: what autograd keeps between the forward and the backward pass.

The count follows the tensors each operation of a transformers decoder layer saves for its backward (in the
spirit of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", adapted to
SDPA/flash attention, which never stores the seq x seq score matrix, to gated MLPs and to RMSNorm computed in
float32). Per token and decoder layer, with widths h (hidden), q (query heads x head_dim), kv, i (MLP):

  norm              4*h (its float32 input) [+ r*h normalised value when the norm weight trains]
                    + its output, kept once for the linears that read it (r*h), or one 16-bit copy per linear
                    when float32 weights train under autocast
  attention         queries, keys, values (kv widened to q when sdpa repeats grouped heads for a mask),
                    the output and its contiguous copy for o_proj, 4 bytes of log-sum-exp per head
  gated MLP         gate, act(gate), up and their product: 4*i values (2*i for fc1 -> act -> fc2)
  LoRA (per layer)  PEFT casts the input to float32 and applies dropout; lora_A keeps that (or its autocast
                    copy) and the dropout mask; lora_B keeps r values
  eager attention   the float32 softmax (and its 16-bit copy) over seq keys per head

With gradient checkpointing only each layer's input (r*h per token) is kept, and one layer's activations
are rebuilt at a time during the backward pass.
"""

from __future__ import annotations

from llm_finetuning.estimate.plan import Plan
from llm_finetuning.estimate.shapes import Linear

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


def lora_bytes(plan: Plan, linear: Linear, rank: int) -> float:
    """Per token: what one LoRA-adapted linear layer keeps besides the base layer."""
    dropout = plan.lora_dropout > 0
    if plan.autocast and plan.act_bytes < 4:
        kept = plan.act_bytes  # lora_A's autocast copy of its (float32) input
    else:
        kept = 4 if dropout or _input_bytes(plan, linear) != 4 else 0  # else lora_A keeps the input itself
    rank_bytes = plan.act_bytes if plan.autocast else 4
    return linear.in_features * (kept + (1 if dropout else 0)) + rank * rank_bytes


def layer_bytes_per_token(plan: Plan) -> float:
    """Bytes one decoder layer keeps per token for its backward pass (no checkpointing)."""
    shape = plan.shape
    r, a, o, att = plan.residual_bytes, plan.act_bytes, plan.linear_out_bytes, plan.attn_bytes
    total = 0.0
    for norm in shape.norms:
        total += norm.width * (4 + (r if plan.params.norms_train else 0))
        readers = _norm_consumers(plan, norm.name)
        if readers == 0:
            continue
        if plan.cast_copies:
            total += readers * a * norm.width
        elif plan.quantization == "none":
            total += r * norm.width
        # quantized base layers keep nothing; their LoRA inputs are counted below
    q, kv = shape.q_width, shape.q_width if plan.expanded_kv else shape.kv_width
    total += att * (q + 2 * kv) + 2 * att * q + 4 * shape.num_heads
    if plan.attention == "eager":
        total += shape.num_heads * plan.seq_len * (4 + (a if a < 4 else 0))
    inter = shape.intermediate_size
    total += (4 if shape.gated_mlp else 2) * inter * o
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
    final_norm = shape.hidden_size * (4 + (r if plan.params.norms_train else 0))
    return plan.tokens * (layers + final_norm)


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


# Logits tiles alive at once in TRL's fused head: its Triton kernels fold a tile in place on GPUs; the torch
# fallback on other devices keeps several tile-sized temporaries (the shifted, exponentiated and gradient tiles).
# Counted from the fallback's code (and confirmed by measuring it): ~4.25 tiles in the forward, ~8.25 in the backward.
FUSED_TILES = {"cuda": (1.0, 1.0), "cpu": (4.25, 8.25)}  # (forward, backward)
TILE_TOKENS, TILE_VOCAB = 4096, 32768


def head_and_loss(plan: Plan) -> tuple[float, float, float]:
    """(kept until the backward, extra at the end of the forward, extra at the start of the backward) for the
    LM head and the loss.

    `fused`: TRL's chunked log-prob head keeps a copy of the scored hidden states and computes the logits one
    (4096 tokens x 32768 vocabulary) tile at a time; its backward holds float32 gradients for the hidden states
    (and for the head weight when it trains). `full`: the (tokens x vocab) logits in the compute dtype, their
    float32 log-softmax and two float32 gradient buffers. `score`: a reward model's scalar head.
    """
    shape = plan.shape
    h, v, a, r = shape.hidden_size, shape.vocab_size, plan.act_bytes, plan.residual_bytes
    scored = plan.sequences * plan.scored
    trains = plan.params.head_trains and plan.loss != "score"
    if plan.loss == "score":
        return plan.tokens * h * r, 0.0, 0.0
    if plan.loss == "full":
        head_grad = v * h * plan.head_weight_bytes if trains else 0.0
        return plan.tokens * h * r, scored * v * (a + 4), scored * v * (a + 12) + head_grad
    # The fused head accumulates the weight gradient in float32, then casts it to the weight's dtype.
    head_grad = v * h * (4 + plan.head_weight_bytes) if trains else 0.0
    forward_tiles, backward_tiles = FUSED_TILES[plan.device]
    tile = min(scored, TILE_TOKENS) * min(v, TILE_VOCAB) * (a if plan.device == "cuda" else 4)
    cast_chunk = min(v, TILE_VOCAB) * h * a if plan.head_weight_bytes != a else 0
    backward = scored * h * (4 + r) + backward_tiles * tile + cast_chunk + head_grad
    return scored * h * r, forward_tiles * tile, backward
