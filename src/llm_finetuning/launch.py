"""Start a multi-process run: `llmft train CONFIG --nproc N` runs `llmft train CONFIG` in N processes through
`accelerate launch` (torch's elastic launcher underneath), one per device, on one or several machines.

Every process runs the same training path; `distributed:` in the config chooses DDP, FSDP or DeepSpeed, and the
main process alone writes the run directory. When a process fails, the launcher stops the others and the run
ends with that process's error and a non-zero exit.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch

from llm_finetuning.errors import UserError

logger = logging.getLogger(__name__)
CHILD = "LLMFT_LAUNCHED"  # set in the processes started here, so they never launch again


@dataclass(frozen=True)
class Topology:
    nproc: int = 1
    """Processes on this machine (one per GPU)."""
    nnodes: int = 1
    """Machines taking part."""
    node_rank: int = 0
    """This machine's index, 0 to nnodes - 1 (0 hosts the main process)."""
    master_addr: str = "127.0.0.1"
    """Address of machine 0, reachable from every machine."""
    master_port: int | None = None
    """Port on machine 0 for the rendezvous (default: a free port on one machine, 29500 on several)."""

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1

    def check(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise UserError("--nproc and --nnodes must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"--node-rank {self.node_rank} must be between 0 and --nnodes - 1 ({self.nnodes - 1})")
        if self.nnodes > 1 and self.master_addr in ("127.0.0.1", "localhost"):
            raise UserError("several machines need --master-addr: the address of machine 0 that all of them reach")
        gpus = torch.cuda.device_count()
        if gpus and self.nproc > gpus:
            raise UserError(f"--nproc {self.nproc} but this machine has {gpus} GPUs; use one process per GPU")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(topology: Topology, train_args: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `llmft <train_args>` in every process."""
    port = topology.master_port or (free_port() if topology.nnodes == 1 else 29500)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # The multi-process launcher (torchrun). On CPU the processes join with gloo: transformers starts the
        # accelerate state with `cpu=True` there.
        "--multi_gpu",
        "--num_processes",
        str(topology.nproc * topology.nnodes),
        "--num_machines",
        str(topology.nnodes),
        "--machine_rank",
        str(topology.node_rank),
        "--main_process_ip",
        topology.master_addr,
        "--main_process_port",
        str(port),
        # Precision and compilation come from the config (training.mixed_precision), not from accelerate's.
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "llm_finetuning.cli.main",
        *train_args,
    ]
    return command


def launch(topology: Topology, train_args: list[str]) -> int:
    """Run the training in every process of `topology`; returns the launcher's exit code (0: all succeeded)."""
    topology.check()
    command = launch_command(topology, train_args)
    logger.info("Starting %d processes on this machine (%d machines in all)", topology.nproc, topology.nnodes)
    env = {**os.environ, CHILD: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(command, env=env, check=False).returncode


def in_launched_process() -> bool:
    return os.environ.get(CHILD) == "1"
