"""`llmft serve --engine vllm` without vLLM: the command built from fake run directories, the refusals, the child."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_finetuning.errors import UserError
from llm_finetuning.serve import vllm_backend
from llm_finetuning.serve.vllm_backend import check_available, plan, run

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
PREFIX = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def full_model(path: Path, template: str | None = TEMPLATE) -> Path:
    write_json(path / "config.json", {"model_type": "llama"})
    write_json(path / "tokenizer_config.json", {} if template is None else {"chat_template": template})
    return path


def adapter(path: Path, base: Path | str, **config) -> Path:
    write_json(
        path / "adapter_config.json", {"peft_type": "LORA", "r": 16, "base_model_name_or_path": str(base)} | config
    )
    return path


def run_dir(path: Path, max_length: int = 512) -> Path:
    """A run directory's layout: the config it was trained with and its `final/`."""
    (path / "final").mkdir(parents=True)
    (path / "config.yaml").write_text(f"data:\n  max_length: {max_length}\n")
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return full_model(tmp_path / "base")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def make_plan(target, adapters=(), *, workdir: Path, **options):
    settings = {"host": "127.0.0.1", "port": 8000, "api_key": None, "context_length": None, "max_batch_size": None}
    return plan(target, "m", list(adapters), workdir=workdir, **(settings | options))


def test_full_model_run_command_exact(tmp_path: Path, workdir: Path) -> None:
    run = run_dir(tmp_path / "run")
    full_model(run / "final")
    result = make_plan(run, workdir=workdir, max_batch_size=32)
    assert result.command == [
        *PREFIX,
        "--model", str(run / "final"),
        "--served-model-name", "m",
        "--host", "127.0.0.1",
        "--port", "8000",
        "--max-model-len", "512",  # the run's data.max_length
        "--max-num-seqs", "32",
        "--chat-template", str(workdir / "chat_template.jinja"),
    ]  # fmt: skip
    assert result.model_id == "m" and result.adapters == {} and result.model_ids() == ["m"]


def test_merged_model_served_and_options_passed(tmp_path: Path, workdir: Path) -> None:
    run = run_dir(tmp_path / "run")
    adapter(run / "final", tmp_path / "base")
    full_model(run / "merged")
    result = make_plan(run, workdir=workdir, context_length=2048, tensor_parallel=2, extra_args=["--seed", "1"])
    command = result.command
    assert command[command.index("--model") + 1] == str(run / "merged")
    assert "--enable-lora" not in command
    assert command[command.index("--max-model-len") + 1] == "2048"  # the caller's value beats the run's
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[-2:] == ["--seed", "1"]


def test_adapter_target_serves_base_and_lora_as_model_id(tmp_path: Path, base: Path, workdir: Path) -> None:
    run = run_dir(tmp_path / "run")
    final = adapter(run / "final", base)
    write_json(final / "tokenizer_config.json", {"chat_template": TEMPLATE})
    result = make_plan(run, workdir=workdir)
    assert result.command == [
        *PREFIX,
        "--model", str(base),
        "--served-model-name", "m-base",
        "--tokenizer", str(final),  # the run's tokenizer, not the base's
        "--host", "127.0.0.1",
        "--port", "8000",
        "--max-model-len", "512",
        "--chat-template", str(workdir / "chat_template.jinja"),
        "--enable-lora",
        "--lora-modules", f"m={final}",
        "--max-lora-rank", "16",
        "--max-loras", "1",
    ]  # fmt: skip
    assert result.model_id == "m" and result.adapters == {"m": str(final)}
    assert result.base_model == str(base) and result.model_ids() == ["m-base", "m"]


def test_two_adapters_lora_modules(tmp_path: Path, base: Path, workdir: Path) -> None:
    a = adapter(tmp_path / "a", base, r=12)
    b = adapter(tmp_path / "b", base, r=8)
    result = make_plan(base, [("a", str(a)), ("b", str(b))], workdir=workdir)
    command = result.command
    assert command.count("--enable-lora") == 1 and command.count("--lora-modules") == 1
    start = command.index("--lora-modules")
    assert command[start : start + 3] == ["--lora-modules", f"a={a}", f"b={b}"]
    assert command[command.index("--max-lora-rank") + 1] == "16"
    assert command[command.index("--max-loras") + 1] == "2"
    assert command[command.index("--served-model-name") + 1] == "m"
    assert result.adapters == {"a": str(a), "b": str(b)}


@pytest.mark.parametrize(
    ("configs", "rank"),
    [
        ([{"r": 12}], 16),
        ([{"r": 64}], 64),
        ([{"r": 4}], 8),
        ([{"r": 12}, {"r": 64}], 64),
        ([{"r": 300}], 320),
        ([{"r": 8, "rank_pattern": {"q_proj": 128}}], 128),  # per-module ranks count too
    ],
)
def test_max_lora_rank_rounds_up(tmp_path: Path, base: Path, workdir: Path, configs, rank: int) -> None:
    adapters = [(f"a{i}", str(adapter(tmp_path / f"a{i}", base, **c))) for i, c in enumerate(configs)]
    command = make_plan(base, adapters, workdir=workdir).command
    assert command[command.index("--max-lora-rank") + 1] == str(rank)


def test_rank_beyond_vllm_refused(tmp_path: Path, base: Path, workdir: Path) -> None:
    big = adapter(tmp_path / "big", base, r=1024)
    with pytest.raises(UserError, match="rank 1024"):
        make_plan(base, [("big", str(big))], workdir=workdir)


def test_adapter_of_other_base_refused_naming_both(tmp_path: Path, base: Path, workdir: Path) -> None:
    other = full_model(tmp_path / "other")
    stray = adapter(tmp_path / "stray", other)
    with pytest.raises(UserError, match="serve adapters of one base") as error:
        make_plan(base, [("stray", str(stray))], workdir=workdir)
    assert str(other) in str(error.value) and str(base) in str(error.value)


def test_adapter_of_same_base_by_other_spelling_accepted(tmp_path: Path, base: Path, workdir: Path) -> None:
    (tmp_path / "x").mkdir()
    same = adapter(tmp_path / "same", tmp_path / "x" / ".." / "base")
    make_plan(base, [("same", str(same))], workdir=workdir)


@pytest.mark.parametrize(
    ("config", "kind"),
    [({"peft_type": "IA3"}, "IA3"), ({"use_dora": True}, "DoRA")],
)
def test_non_lora_adapters_refused(tmp_path: Path, base: Path, workdir: Path, config: dict, kind: str) -> None:
    odd = adapter(tmp_path / "odd", base, **config)
    with pytest.raises(UserError, match=f"{kind} adapter.*LoRA adapters only.*llmft merge.*--engine embedded"):
        make_plan(base, [("odd", str(odd))], workdir=workdir)
    with pytest.raises(UserError, match=f"{kind} adapter"):  # as the target itself too
        make_plan(odd, workdir=workdir)


def test_adapter_without_adapter_config_refused(tmp_path: Path, base: Path, workdir: Path) -> None:
    other = full_model(tmp_path / "other")
    with pytest.raises(UserError, match=r"--adapter x=.*no adapter there"):
        make_plan(base, [("x", str(other))], workdir=workdir)


@pytest.mark.parametrize("names", [("a", "a"), ("m", "b")])
def test_duplicate_model_ids_refused(tmp_path: Path, base: Path, workdir: Path, names) -> None:
    adapters = [(name, str(adapter(tmp_path / f"a{i}", base))) for i, name in enumerate(names)]
    with pytest.raises(UserError, match="is taken"):
        make_plan(base, adapters, workdir=workdir)


def test_adapter_named_like_served_base_refused(tmp_path: Path, base: Path, workdir: Path) -> None:
    target = adapter(tmp_path / "target", base)
    other = adapter(tmp_path / "other", base)
    with pytest.raises(UserError, match="`m-base` is taken"):
        make_plan(target, [("m-base", str(other))], workdir=workdir)


def test_chat_template_written_and_passed(tmp_path: Path, workdir: Path) -> None:
    model = full_model(tmp_path / "model")
    result = make_plan(model, workdir=workdir)
    written = workdir / "chat_template.jinja"
    assert written.read_text() == TEMPLATE
    assert result.chat_template == str(written)
    assert result.command[result.command.index("--chat-template") + 1] == str(written)


def test_chat_template_named_default_taken(tmp_path: Path, workdir: Path) -> None:
    model = full_model(tmp_path / "model")
    named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": TEMPLATE}]
    write_json(model / "tokenizer_config.json", {"chat_template": named})
    make_plan(model, workdir=workdir)
    assert (workdir / "chat_template.jinja").read_text() == TEMPLATE


def test_chat_template_jinja_file_preferred(tmp_path: Path, workdir: Path) -> None:
    model = full_model(tmp_path / "model", template="OLD {{ messages }}")
    (model / "chat_template.jinja").write_text(TEMPLATE)
    result = make_plan(model, workdir=workdir)
    assert Path(result.chat_template).read_text() == TEMPLATE


def test_adapter_target_without_template_uses_base_one(tmp_path: Path, base: Path, workdir: Path) -> None:
    (base / "chat_template.jinja").write_text(TEMPLATE)
    result = make_plan(adapter(tmp_path / "lora", base), workdir=workdir)
    assert Path(result.chat_template).read_text() == TEMPLATE


def test_no_template_no_flag(tmp_path: Path, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = full_model(tmp_path / "model", template=None)
    with caplog.at_level(logging.WARNING, logger=vllm_backend.__name__):
        result = make_plan(model, workdir=workdir)
    assert "--chat-template" not in result.command and result.chat_template is None
    assert not (workdir / "chat_template.jinja").exists()
    assert "no chat template" in caplog.text


def test_adapter_with_other_template_warned(tmp_path: Path, base: Path, workdir, caplog) -> None:
    own = adapter(tmp_path / "own", base)
    write_json(own / "tokenizer_config.json", {"chat_template": "OTHER"})
    with caplog.at_level(logging.WARNING, logger=vllm_backend.__name__):
        make_plan(base, [("own", str(own))], workdir=workdir)
    assert "own has its own chat template" in caplog.text


def test_hub_id_passed_through_and_missing_path_refused(tmp_path: Path, workdir: Path) -> None:
    command = make_plan("org/model", workdir=workdir).command
    assert command[command.index("--model") + 1] == "org/model"
    with pytest.raises(UserError, match="no such directory"):
        make_plan(tmp_path / "missing", workdir=workdir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no model there"):
        make_plan(empty, workdir=workdir)


class FakeProcess:
    """A child whose `wait` returns, or raises, the next of `outcomes`."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.waits: list[float | None] = []
        self.terminated = self.killed = False

    def wait(self, timeout: float | None = None) -> int:
        self.waits.append(timeout)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def poll(self) -> int | None:
        return None

    def terminate(self) -> None:
        self.terminated = True

    def kill(self) -> None:
        self.killed = True


class FakePopen:
    def __init__(self, process: FakeProcess) -> None:
        self.process = process
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, command, **kwargs) -> FakeProcess:
        self.calls.append((command, kwargs))
        return self.process


def test_api_key_goes_through_the_environment_and_never_into_logs(tmp_path: Path, workdir: Path, caplog) -> None:
    model = full_model(tmp_path / "model")
    result = make_plan(model, workdir=workdir, api_key="s3cret-key", extra_args=["--api-key", "s3cret-two"])
    # The key on a command line is readable by every user of the machine (`ps`); vLLM reads VLLM_API_KEY too.
    assert "s3cret-key" not in result.command and result.env == {"VLLM_API_KEY": "s3cret-key"}
    popen = FakePopen(FakeProcess(0))
    with caplog.at_level(logging.DEBUG, logger=vllm_backend.__name__):
        run(result, popen=popen)
    assert popen.calls[0][1]["env"]["VLLM_API_KEY"] == "s3cret-key"
    assert popen.calls[0][1]["env"]["PATH"] == os.environ["PATH"]  # the rest of the environment is inherited
    # A key the user passes through on purpose is still masked in what is logged.
    assert "--api-key '***'" in caplog.text
    assert "s3cret" not in caplog.text and "s3cret" not in result.display()
    assert "--api-key=***" in make_plan(model, workdir=workdir, api_key=None, extra_args=["--api-key=x1"]).display()


def test_no_api_key_no_flag(tmp_path: Path, workdir: Path) -> None:
    result = make_plan(full_model(tmp_path / "model"), workdir=workdir, api_key="")
    assert "--api-key" not in result.command and result.env == {}


def test_check_available_refusals() -> None:
    asked: list[str] = []

    def missing(name: str):
        asked.append(name)
        return None

    with pytest.raises(UserError) as error:
        check_available(importer=missing, cuda=lambda: True)
    assert asked == ["vllm"]
    assert "pip install 'llm-finetuning[vllm]'" in str(error.value) and "--engine embedded" in str(error.value)
    with pytest.raises(UserError, match="CUDA GPU.*--engine embedded"):
        check_available(importer=lambda name: object(), cuda=lambda: False)
    assert check_available(importer=lambda name: object(), cuda=lambda: True) is None


def test_run_starts_command_and_returns_exit_code(tmp_path: Path, workdir: Path) -> None:
    result = make_plan(full_model(tmp_path / "model"), workdir=workdir)
    popen = FakePopen(FakeProcess(3))
    assert run(result, popen=popen) == 3
    assert popen.calls == [(result.command, {"env": {**os.environ}})]  # stdio inherited: nothing redirected
    assert run(result, popen=FakePopen(FakeProcess(-15))) == 143  # ended by SIGTERM, as a shell reports it


def test_run_ctrl_c_terminates_child(tmp_path: Path, workdir: Path) -> None:
    result = make_plan(full_model(tmp_path / "model"), workdir=workdir)
    child = FakeProcess(KeyboardInterrupt(), 0)
    assert run(result, popen=FakePopen(child), grace_s=5) == 0
    assert child.terminated and not child.killed
    assert child.waits == [None, 5]


def test_run_ctrl_c_kills_child_that_does_not_stop(tmp_path: Path, workdir: Path) -> None:
    result = make_plan(full_model(tmp_path / "model"), workdir=workdir)
    child = FakeProcess(KeyboardInterrupt(), subprocess.TimeoutExpired("vllm", 5), -9)
    assert run(result, popen=FakePopen(child), grace_s=5) == 137
    assert child.terminated and child.killed
