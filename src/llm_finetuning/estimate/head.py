"""Memory of the LM head and the loss: TRL's fused chunked head, the toolkit's plain head (CPU), full logits, or a
reward model's scalar score.

Each is three numbers: what stays alive until the backward pass, what the forward adds on top at its largest
moment, and what the backward adds at its largest moment (including the head's own weight gradient).
"""

from __future__ import annotations

from llm_finetuning.estimate.plan import Plan

# Logits tiles alive at once in TRL's fused head: its Triton kernels fold a tile in place on GPUs; the torch
# fallback on other devices keeps several tile-sized temporaries (the shifted, exponentiated and gradient tiles).
# Counted from the fallback's code (and confirmed by measuring it): ~4.25 tiles in the forward, ~8.25 in the backward.
FUSED_TILES = {"cuda": (1.0, 1.0), "cpu": (4.25, 8.25)}  # (forward, backward)
TILE_TOKENS, TILE_VOCAB = 4096, 32768


def head_and_loss(plan: Plan) -> tuple[float, float, float]:
    """(kept until the backward, extra at the end of the forward, extra at the start of the backward)."""
    if plan.loss == "score":
        return plan.tokens * plan.shape.hidden_size * plan.residual_bytes, 0.0, 0.0
    if plan.loss == "full":
        return _full(plan)
    if plan.loss == "plain":
        return _plain(plan)
    return _fused(plan)


def _full(plan: Plan) -> tuple[float, float, float]:
    """The (tokens x vocab) logits in the compute dtype, their float32 log-softmax and two float32 gradients."""
    shape = plan.shape
    h, v, a = shape.hidden_size, shape.vocab_size, plan.act_bytes
    scored = plan.sequences * plan.scored
    head_grad = v * h * plan.head_weight_bytes if plan.params.head_trains else 0.0
    return plan.tokens * h * plan.residual_bytes, scored * v * (a + 4), scored * v * (a + 12) + head_grad


def _plain(plan: Plan) -> tuple[float, float, float]:
    """The toolkit's plain head (models/lm_head.py) over the labelled positions only.

    It gathers the labelled hidden states, projects them (in the autocast dtype), casts the logits to float32 and
    keeps their log-softmax for the backward, plus the head's input when the head trains. The logits are released
    once their log-softmax exists; the entropy then needs one float32 logits-sized temporary (computed in place
    without gradients, SFT) or two (exp and the product, GRPO, whose entropy keeps its graph). The backward holds the
    log-probabilities, their gradient and the logits' gradient (12 bytes per logit), then the logits' gradient in
    the matmul dtype with the head's weight gradient (in the weight's dtype, after a copy in the autocast dtype).
    """
    shape = plan.shape
    h, v, a, r = shape.hidden_size, shape.vocab_size, plan.act_bytes, plan.residual_bytes
    n = plan.sequences * plan.scored
    log_probs = 4.0 * n * v
    matmul = a if plan.autocast else plan.head_weight_bytes  # the logits' dtype before the float32 cast
    head_input = n * h * (a if plan.autocast else r) if plan.params.head_trains else 0.0
    head_grad = 0.0
    if plan.params.head_trains:
        head_grad = v * h * (plan.head_weight_bytes + (matmul if matmul != plan.head_weight_bytes else 0))
    temporaries = 2 if plan.method == "grpo" else 1  # entropy's exp (and product, when it keeps its graph)
    forward = temporaries * log_probs + plan.tokens * h * r  # the hidden states of the whole batch
    backward = max(2 * log_probs, (matmul - 4.0) * n * v + n * h * a + head_grad)
    return log_probs + head_input, forward, backward


def _fused(plan: Plan) -> tuple[float, float, float]:
    """TRL's chunked log-prob head: a copy of the scored hidden states, the logits one (4096 tokens x 32768
    vocabulary) tile at a time; its backward holds float32 gradients for the hidden states (and for the head
    weight when it trains)."""
    shape = plan.shape
    h, v, a, r = shape.hidden_size, shape.vocab_size, plan.act_bytes, plan.residual_bytes
    scored = plan.sequences * plan.scored
    # The fused head accumulates the weight gradient in float32, then casts it to the weight's dtype.
    head_grad = v * h * (4 + plan.head_weight_bytes) if plan.params.head_trains else 0.0
    forward_tiles, backward_tiles = FUSED_TILES[plan.device]
    tile = min(scored, TILE_TOKENS) * min(v, TILE_VOCAB) * (a if plan.device == "cuda" else 4)
    cast_chunk = min(v, TILE_VOCAB) * h * a if plan.head_weight_bytes != a else 0
    backward = scored * h * (4 + r) + backward_tiles * tile + cast_chunk + head_grad
    return scored * h * r, forward_tiles * tile, backward
