"""The `distributed:` section: how several processes share the work (with `llmft train --nproc N`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llm_finetuning.config.base import Section


class DistributedConfig(Section):
    """Multi-process training. One process per device is started by `llmft train CONFIG --nproc N` (and, for
    several machines, `--nnodes`, `--node-rank`, `--master-addr`); this section chooses how they share the
    model. Ignored when a single process trains."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """`ddp`: every process holds the whole model and gradients are averaged (the default; fastest when the
    model fits one device). `fsdp`: parameters, gradients and optimizer states are sharded across processes
    (PyTorch FSDP). `deepspeed`: ZeRO sharding (needs the `deepspeed` package)."""
    fsdp_version: Literal[1, 2] = 2
    """FSDP implementation: 2 (per-parameter sharding, `fully_shard`; the default) or 1 (flat parameters)."""
    fsdp_sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard"] = "full_shard"
    """What FSDP shards: everything (`full_shard`, ZeRO-3-like), gradients and optimizer states only
    (`shard_grad_op`, ZeRO-2-like), or full sharding within a node and replication across nodes (`hybrid_shard`)."""
    cpu_offload: bool = False
    """Keep sharded parameters (FSDP) or optimizer states (DeepSpeed) in CPU memory: slower, fits larger models."""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage: 2 shards gradients and optimizer states, 3 also the parameters."""
    find_unused_parameters: bool = False
    """DDP: search the graph for parameters without gradients at every step. Needed only when some trainable
    parameters do not take part in the loss (slower)."""
    timeout_minutes: int = Field(30, gt=0)
    """How long a process waits for the others at a synchronisation point before the run fails."""

    @property
    def sharding_stage(self) -> int:
        """The ZeRO stage this section amounts to across several processes: 0 for DDP, 2 for FSDP `shard_grad_op`,
        3 for FSDP full or hybrid sharding (the parameters are sharded), DeepSpeed's own `zero_stage`."""
        if self.strategy == "fsdp":
            return 2 if self.fsdp_sharding == "shard_grad_op" else 3
        return self.zero_stage if self.strategy == "deepspeed" else 0
