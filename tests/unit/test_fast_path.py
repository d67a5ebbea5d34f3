"""The fast path: every choice it makes for every kind of device, from faked capabilities, and that the rest of the
package asks it instead of looking at the device itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError
from llm_finetuning.models import fast_path
from llm_finetuning.models.fast_path import PER_EXAMPLE_SDPA, TORCH_VARLEN, Capabilities, plan

pytestmark = pytest.mark.unit

H200 = dict(device="cuda", name="H200", compute_capability=(9, 0), bf16=True, triton=True, flex_attention=True)
T4 = dict(device="cuda", name="T4", compute_capability=(7, 5), bf16=False, triton=True, flex_attention=True)


def config(**sections) -> Config:
    base = {"data": {"train": {"path": "x.jsonl", "format": "prompt_completion"}}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if key == "data" else value
    return Config.model_validate(base)


@pytest.mark.parametrize(
    ("caps", "attention", "padding_free"),
    [
        (dict(H200, flash_attn=True, torch_varlen=True), "flash_attention_2", "on"),
        (dict(H200, torch_varlen=True), TORCH_VARLEN, "on"),
        (H200, "flex_attention", "on"),  # no varlen kernel in this torch
        (dict(H200, flex_attention=False), "sdpa", "off"),
        (dict(H200, triton=False, flex_attention=True), "sdpa", "off"),  # flex compiles with Triton
        (dict(T4, flash_attn=True, torch_varlen=True), "flex_attention", "on"),  # flash kernels need sm80+
        (dict(device="xpu", bf16=True, triton=True, flex_attention=True), "flex_attention", "on"),
        (dict(device="cpu", bf16=True), PER_EXAMPLE_SDPA, "on"),
        (dict(device="mps"), PER_EXAMPLE_SDPA, "on"),
    ],
)
def test_attention_for_rows_of_several_examples_is_the_fastest_kernel_the_device_has(caps, attention, padding_free):
    path = plan(config(), Capabilities(**caps))
    assert path.attention.value == attention
    assert path.padding_free.value == padding_free
    assert path.uses_row_attention == (padding_free == "on")


def test_the_sdpa_math_kernel_threshold_applies_on_cpu_only():
    assert plan(config(), Capabilities(device="cpu")).sdpa_math_max_length == fast_path.CPU_MATH_MAX_LENGTH
    assert plan(config(), Capabilities(device="mps")).sdpa_math_max_length == 0
    assert plan(config(), Capabilities(**H200)).sdpa_math_max_length == 0


def test_a_named_attention_is_used_as_named_or_refused_where_it_cannot_run():
    gpu = Capabilities(**dict(H200, torch_varlen=True))
    assert plan(config(model={"attn_implementation": "torch_varlen"}), gpu).attention.value == TORCH_VARLEN
    assert plan(config(model={"attn_implementation": "sdpa_per_example"}), gpu).attention.value == PER_EXAMPLE_SDPA
    sdpa = plan(config(model={"attn_implementation": "sdpa"}), gpu)
    assert (sdpa.attention.value, sdpa.padding_free.value) == ("sdpa", "off")  # a whole-row mask: keep padding
    assert plan(config(model={"attn_implementation": "eager"}), gpu).padding_free.value == "off"
    with pytest.raises(ConfigError, match=r"model\.attn_implementation: torch_varlen: it needs a CUDA GPU"):
        plan(config(model={"attn_implementation": "torch_varlen"}), Capabilities(device="cpu", torch_varlen=True))
    with pytest.raises(ConfigError, match=r"torch_varlen: this torch has no torch\.nn\.attention\.varlen"):
        plan(config(model={"attn_implementation": "torch_varlen"}), Capabilities(**H200))
    with pytest.raises(ConfigError, match=r"flash_attention_2 needs the flash-attn package"):
        plan(config(model={"attn_implementation": "flash_attention_2"}), gpu)
    with pytest.raises(ConfigError, match=r"flex_attention needs torch >= 2\.5"):
        plan(config(model={"attn_implementation": "flex_attention"}), Capabilities(device="cpu"))
    unsloth = plan(config(model={"name": "org/model", "backend": "unsloth"}), gpu)
    assert (unsloth.attention.value, unsloth.padding_free.value) == ("unsloth", "on")


@pytest.mark.parametrize(
    ("sections", "reason"),
    [
        ({"method": {"name": "dpo"}}, "method dpo"),
        ({"data": {"packing": True}}, "data.packing"),
        ({"data": {"padding_free": False}}, "data.padding_free: false"),
        ({"adapter": {"method": "prompt", "num_virtual_tokens": 4}}, "virtual tokens"),
        ({"training": {"per_device_batch_size": 1}}, "a batch of one"),
    ],
)
def test_padding_free_is_off_where_the_config_rules_it_out(sections, reason):
    for caps in (Capabilities(device="cpu"), Capabilities(**dict(H200, torch_varlen=True))):
        choice = plan(config(**sections), caps).padding_free
        assert choice.value == "off" and reason in choice.reason


def test_a_quantized_base_goes_padding_free_on_cuda_only():
    quantized = config(model={"quantization": "nf4"})
    assert plan(quantized, Capabilities(device="cpu")).padding_free.value == "off"  # bitsandbytes repacks on CPU
    assert plan(quantized, Capabilities(**dict(H200, torch_varlen=True))).padding_free.value == "on"


def test_lm_head_dtype_and_autocast_follow_the_device():
    h200, t4 = plan(config(), Capabilities(**H200)), plan(config(), Capabilities(**T4))
    assert (h200.lm_head.value, h200.dtype.value, h200.precision.value) == ("trl", "bfloat16", "bf16")
    assert (t4.lm_head.value, t4.dtype.value, t4.precision.value) == ("trl", "float32", "fp16")
    no_triton = plan(config(), Capabilities(**dict(H200, triton=False)))
    assert no_triton.lm_head.value == "plain"  # TRL's head would fall back to its slow torch loop
    xpu = plan(config(), Capabilities(device="xpu", bf16=True, triton=True))
    assert (xpu.lm_head.value, xpu.dtype.value, xpu.precision.value) == ("trl", "bfloat16", "bf16")
    mps = plan(config(), Capabilities(device="mps"))
    assert (mps.lm_head.value, mps.dtype.value, mps.precision.value) == ("plain", "float32", "no")
    cpu = plan(config(), Capabilities(device="cpu", bf16=True), hidden_size=768)
    assert (cpu.lm_head.value, cpu.dtype.value, cpu.precision.value) == ("plain", "float32", "bf16")
    explicit = plan(config(model={"dtype": "float16"}, training={"mixed_precision": "no"}), Capabilities(**H200))
    assert (explicit.dtype.value, explicit.precision.value) == ("float16", "no")
    with pytest.raises(ConfigError, match=r"training\.mixed_precision: fp16 autocast needs a CUDA GPU"):
        plan(config(training={"mixed_precision": "fp16"}), Capabilities(device="cpu"))


def test_liger_is_on_only_where_asked_and_able():
    gpu = Capabilities(**dict(H200, liger=True))
    off = plan(config(), gpu).liger
    assert off.value == "off" and "available here" in off.reason
    assert "available" not in plan(config(), Capabilities(**H200)).liger.reason
    assert plan(config(training={"liger_kernel": True}), gpu).liger.value == "on"
    with pytest.raises(ConfigError, match="liger-kernel is not installed"):
        plan(config(training={"liger_kernel": True}), Capabilities(**H200))
    with pytest.raises(ConfigError, match="no GPU is visible"):
        plan(config(training={"liger_kernel": True}), Capabilities(device="cpu", liger=True))
    with pytest.raises(ConfigError, match="model.backend: unsloth"):
        plan(config(model={"name": "org/m", "backend": "unsloth"}, training={"liger_kernel": True}), gpu)


def test_optimizer_and_compile():
    assert plan(config(), Capabilities(device="cpu")).optimizer.value == "adamw_torch_fused"
    assert plan(config(), Capabilities(device="mps", fused_adamw=False)).optimizer.value == "adamw_torch"
    assert plan(config(training={"optimizer": "sgd"}), Capabilities(device="cpu")).optimizer.value == "sgd"
    assert plan(config(), Capabilities(**H200)).compile.value == "off"
    assert plan(config(training={"compile": True}), Capabilities(**H200)).compile.value == "on"
    assert plan(config(training={"compile": True}), Capabilities(device="cpu")).compile.value == "on"
    with pytest.raises(ConfigError, match=r"training\.compile: torch\.compile needs Triton"):
        plan(config(training={"compile": True}), Capabilities(**dict(H200, triton=False)))


def test_the_training_arguments_take_the_plan(tmp_path, fake_device):
    from llm_finetuning.methods.common import training_arguments
    from llm_finetuning.runs.rundir import RunDir

    fake_device(**dict(H200, torch_varlen=True))
    run = RunDir(tmp_path / "run")
    gpu = training_arguments(config(training={"compile": True}), run, has_eval=False)
    assert (gpu["bf16"], gpu["fp16"], gpu["use_cpu"], gpu["torch_compile"]) == (True, False, False, True)
    fake_device(device="mps", fused_adamw=False)
    mps = training_arguments(config(), run, has_eval=False)
    assert (mps["bf16"], mps["use_cpu"], mps["optim"]) == (False, False, "adamw_torch")
    fake_device(device="cpu", bf16=False)
    cpu = training_arguments(config(), run, has_eval=False)
    assert (cpu["bf16"], cpu["use_cpu"], cpu["torch_compile"]) == (False, True, False)


def test_the_plan_is_shown_by_env_and_check(tmp_path, write_jsonl, qa_rows, fake_device):
    from llm_finetuning.check.preflight import run_checks
    from llm_finetuning.env import fast_path_info
    from tests.conftest import tiny_config

    fake_device(**dict(H200, torch_varlen=True))
    info = fast_path_info()
    assert info["capabilities"]["device"] == "cuda"
    assert info["sft_defaults"]["attention (packed/padding-free rows)"].startswith(TORCH_VARLEN)
    assert len(info["sft_defaults"]) == 9
    report = run_checks(Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run")), 10)
    shown = {f.where: f.message for f in report.by_level("info") if f.where.startswith("fast path")}
    assert shown["fast path: LM head"].startswith("trl")
    assert shown["fast path: padding-free batches"].startswith("on")


def test_detect_reads_this_machine():
    caps = fast_path.detect()
    assert caps.device in ("cpu", "cuda", "mps", "xpu") and caps.torch_version
    import torch

    assert caps.device != "cuda" or torch.cuda.is_available()


# Modules that may look at the device: the fast path's own detection, and code that asks other questions of it
# (versions for `llmft env`, process counts, RNG state, the process group's backend, Unsloth's environment check).
DEVICE_QUERIES = re.compile(r"torch\.cuda\.is_available|torch\.backends\.mps|is_bf16_supported|is_triton_available")
ALLOWED = {
    "models/fast_path.py",
    "env.py",
    "launch.py",
    "runs/distributed.py",
    "methods/ppo/state.py",
    "models/unsloth_backend.py",
}


def test_nothing_else_branches_on_the_device_for_these_choices():
    package = Path(fast_path.__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if str(path.relative_to(package)) not in ALLOWED and DEVICE_QUERIES.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
