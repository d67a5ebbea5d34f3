"""`distributed:` presets become the right TrainingArguments, and impossible combinations are refused."""

from __future__ import annotations

import pytest

from llm_finetuning.config import Config
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.launch import Topology, launch_command
from llm_finetuning.methods.common import deepspeed_config, distributed_arguments
from tests.conftest import tiny_config

pytestmark = pytest.mark.unit


def config(tmp_path, **distributed):
    return Config.model_validate(tiny_config(tmp_path / "d.jsonl", tmp_path / "run", distributed=distributed))


def test_single_process_runs_get_no_distributed_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_arguments(config(tmp_path, strategy="fsdp")) == {}


def test_ddp_and_fsdp_presets(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    ddp = distributed_arguments(config(tmp_path, find_unused_parameters=True, timeout_minutes=5))
    assert ddp == {"ddp_find_unused_parameters": True, "ddp_timeout": 300}
    fsdp = distributed_arguments(config(tmp_path, strategy="fsdp", fsdp_sharding="shard_grad_op", cpu_offload=True))
    assert fsdp["fsdp"] is True
    assert fsdp["fsdp_config"]["version"] == 2 and fsdp["fsdp_config"]["reshard_after_forward"] is False
    assert fsdp["fsdp_config"]["cpu_offload"] is True and fsdp["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    v1 = distributed_arguments(config(tmp_path, strategy="fsdp", fsdp_version=1, fsdp_sharding="hybrid_shard"))
    assert v1["fsdp_config"]["reshard_after_forward"] == "hybrid_shard"


def test_impossible_combinations_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="hybrid_shard needs `fsdp_version: 1`"):
        distributed_arguments(config(tmp_path, strategy="fsdp", fsdp_sharding="hybrid_shard"))
    raw = tiny_config(tmp_path / "d.jsonl", tmp_path / "run", distributed={"strategy": "fsdp"})
    raw["model"]["quantization"] = "nf4"
    with pytest.raises(ConfigError, match="fsdp cannot shard a 4/8-bit quantized base"):
        distributed_arguments(Config.model_validate(raw))
    with pytest.raises(ConfigError, match="deepspeed is not installed"):
        distributed_arguments(config(tmp_path, strategy="deepspeed"))


def test_deepspeed_zero_configs_follow_the_training_arguments():
    two = deepspeed_config(2, offload=False)
    assert two["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in two["zero_optimization"]
    assert two["train_micro_batch_size_per_gpu"] == "auto" and two["bf16"] == {"enabled": "auto"}
    three = deepspeed_config(3, offload=True)["zero_optimization"]
    assert three["offload_optimizer"]["device"] == "cpu" and three["offload_param"]["device"] == "cpu"
    assert three["stage3_gather_16bit_weights_on_model_save"] is True


def test_launch_command_and_topology_checks():
    command = launch_command(Topology(nproc=2, nnodes=2, node_rank=1, master_addr="10.0.0.1"), ["train", "c.yaml"])
    joined = " ".join(command)
    assert "accelerate.commands.launch" in joined and "--num_processes 4" in joined and "--num_machines 2" in joined
    assert (
        "--machine_rank 1" in joined
        and "--main_process_ip 10.0.0.1" in joined
        and "--main_process_port 29500" in joined
    )
    assert command[-4:] == ["-m", "llm_finetuning.cli.main", "train", "c.yaml"]
    with pytest.raises(UserError, match="--master-addr"):
        Topology(nproc=1, nnodes=2).check()
    with pytest.raises(UserError, match="--node-rank 2"):
        Topology(nproc=1, nnodes=2, node_rank=2, master_addr="10.0.0.1").check()
