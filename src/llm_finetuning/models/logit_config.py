"""Config attributes that transform a model's logits; torch-free, so the estimate reads the same list."""

# Soft-capping and scaling of the logits: models that set any keep TRL's LM head (models/lm_head.py), and the
# estimate models that head for them.
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)
