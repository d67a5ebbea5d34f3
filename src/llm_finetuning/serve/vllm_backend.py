"""`llmft serve --engine vllm`: the same run directory served by vLLM's own OpenAI-compatible server.

The embedded engine (`--engine embedded`, the default) runs anywhere; this one needs the `vllm` extra and a CUDA
GPU, and in exchange gets continuous batching over a paged KV cache. Nothing here imports vLLM: `plan` turns a run
(and its adapters) into a `python -m vllm.entrypoints.openai.api_server ...` command line, checking up front what
vLLM would otherwise refuse with a long traceback after minutes of start-up, and `run` starts it as a child process.

How a run maps onto vLLM's model names:

- a full model (a run's `merged/`, or any model directory or hub id) is `--model`, served as `model_id`;
- an adapter run serves its base model as `--model` and the adapter as a LoRA module named `model_id`, so that the
  id a client uses is the same as with the embedded engine. vLLM cannot hide the base model: it is served as well,
  as `<model_id>-base` (the embedded engine does not offer it in this case);
- every `--adapter NAME=RUN` is one more LoRA module, `NAME`, and must be a LoRA adapter of the same base.

vLLM applies one chat template to every model id, so the run's own template (the one it was trained with) is
written to the work directory and passed as `--chat-template`. Where that template writes tool calls in a layout
vLLM has a parser for, `--enable-auto-tool-choice --tool-call-parser ...` is passed too, so `tools` work with
either engine.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_finetuning.data.tool_parsers import format_for_template
from llm_finetuning.errors import UserError
from llm_finetuning.models import fast_path
from llm_finetuning.serve.loading import _adapter_base, _same, resolve, trained_length

logger = logging.getLogger(__name__)

MODULE = "vllm.entrypoints.openai.api_server"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for --max-lora-rank
BASE_SUFFIX = "-base"
STOP_GRACE_S = 30.0  # vLLM frees GPU memory and stops its workers on SIGTERM; give it that long before SIGKILL
TOOL_PARSERS = {"hermes": "hermes", "llama3": "llama3_json", "mistral": "mistral"}  # our layout -> vLLM's parser
_UNSUPPORTED = "vLLM serves LoRA adapters only; merge it into its base with `llmft merge` or use --engine embedded"


@dataclass(frozen=True)
class VllmPlan:
    """What `run` starts: the command line and, for logs and tests, what it serves."""

    command: list[str]
    model_id: str
    """The id clients ask for: the model itself, or the target adapter's LoRA module."""
    adapters: dict[str, str]
    """LoRA module name -> adapter directory (the target adapter's included, under `model_id`)."""
    chat_template: str | None
    """The template file passed as --chat-template, or None: vLLM uses the model's own."""
    base_model: str
    """What --model loads: a directory or a hub id."""
    served_model_name: str
    """The name vLLM serves `base_model` under (`model_id`, or `<model_id>-base` for an adapter target)."""
    context_length: int | None = None
    tool_parser: str | None = None
    """vLLM's `--tool-call-parser` for the chat template's call layout, or None: vLLM serves no tools."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables set for the child on top of this environment: the API key travels here (VLLM_API_KEY), not on
    the command line, where any user of the machine could read it in `ps`."""

    def model_ids(self) -> list[str]:
        return [self.served_model_name, *self.adapters]

    def display(self) -> str:
        """The command as a shell line with the API key masked: safe to log."""
        return shlex.join(_masked(self.command))


def check_available(
    importer: Callable[[str], Any] = importlib.util.find_spec,
    cuda: Callable[[], bool] | None = None,
) -> None:
    """Refuse, naming the fix, where vLLM cannot run: the package is missing or there is no CUDA GPU."""
    if importer("vllm") is None:
        raise UserError(
            "--engine vllm needs vLLM: install the `vllm` extra: pip install 'llm-finetuning[vllm]' "
            "(on a machine with a CUDA GPU); the embedded engine, --engine embedded, works everywhere"
        )
    if not (cuda() if cuda is not None else fast_path.detect().device == "cuda"):
        raise UserError("--engine vllm: vLLM needs a CUDA GPU and none is visible here; use --engine embedded")


def plan(
    target: str | Path,
    model_id: str,
    adapters: list[tuple[str, str]],
    *,
    host: str,
    port: int,
    api_key: str | None,
    context_length: int | None,
    max_batch_size: int | None,
    workdir: Path,
    tensor_parallel: int = 1,
    extra_args: Sequence[str] = (),
) -> VllmPlan:
    """The vLLM server command for `target` as `model_id` plus each `(name, run)` adapter (see the module doc).

    `context_length` defaults to the run's `data.max_length`. The chat template found is written to
    `workdir/chat_template.jinja`, so `workdir` must outlive the server. `extra_args` go last, verbatim, for any
    vLLM option not covered here."""
    if tensor_parallel < 1:
        raise UserError(f"--tensor-parallel {tensor_parallel}: must be 1 or more")
    context_length = context_length or trained_length(target)
    path = resolve(target)
    loras: dict[str, Path] = {}
    configs: list[dict[str, Any]] = []
    tokenizer: Path | None = None
    if (path / "adapter_config.json").is_file():
        base = _adapter_base(path)
        if not base:
            raise UserError(f"`{target}`: adapter_config.json names no base_model_name_or_path")
        if os.path.isabs(base) and not Path(base).exists():
            raise UserError(f"`{target}` is an adapter of `{base}`, which does not exist (any more)")
        configs.append(_lora_config(path, f"`{target}`"))
        loras[model_id] = path
        served_name = model_id + BASE_SUFFIX
        # the adapter run saved the tokenizer it was trained with (added tokens, pad token): use it, not the base's
        tokenizer = path if (path / "tokenizer_config.json").is_file() else None
        template_dirs = [path, Path(base)]
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"`{target}`: no model there (config.json) nor an adapter (adapter_config.json)")
        base = str(path)
        served_name = model_id
        template_dirs = [path]
    elif path.exists():
        raise UserError(f"`{target}` is a file; serve a run directory, a model directory or a hub id")
    elif os.path.isabs(target) or str(target).startswith((".", "~")):  # meant as a path: not a hub id either
        raise UserError(f"`{target}`: no such directory")
    else:  # a hub id: vLLM downloads it, template and all
        base = str(target)
        served_name = model_id
        template_dirs = []

    names = [served_name, *loras]
    for name, run in adapters:
        if name in names:
            raise UserError(f"--adapter {name}={run}: the model id `{name}` is taken; give each adapter its own name")
        names.append(name)
        adapter_path = resolve(run)
        adapter_base = _adapter_base(adapter_path)
        if adapter_base is None:
            raise UserError(
                f"--adapter {name}={run}: no adapter there (adapter_config.json); a full model is served on its own"
            )
        if not _same(adapter_base, base):
            raise UserError(
                f"--adapter {name}={run}: trained on `{adapter_base}`, but the served base is `{base}`; "
                "serve adapters of one base together"
            )
        configs.append(_lora_config(adapter_path, f"--adapter {name}={run}"))
        loras[name] = adapter_path

    template = _chat_template(template_dirs)
    template_file: Path | None = None
    if template is None:
        logger.warning("no chat template found for %s; vLLM uses the model's own, if it has one", target)
    else:
        template_file = workdir / "chat_template.jinja"
        template_file.write_text(template)
        for name, run in adapters:  # one --chat-template for all: say so when an adapter was trained with another
            own = _chat_template([resolve(run)])
            if own is not None and own != template:
                logger.warning("adapter %s has its own chat template; vLLM applies %s's to every model", name, target)

    command = [sys.executable, "-m", MODULE, "--model", base, "--served-model-name", served_name]
    if tokenizer is not None:
        command += ["--tokenizer", str(tokenizer)]
    command += ["--host", host, "--port", str(port)]
    if context_length:
        command += ["--max-model-len", str(context_length)]
    if max_batch_size:
        command += ["--max-num-seqs", str(max_batch_size)]
    if tensor_parallel > 1:
        command += ["--tensor-parallel-size", str(tensor_parallel)]
    if template_file is not None:
        command += ["--chat-template", str(template_file)]
    tool_parser = _tool_parser(template, extra_args)
    if tool_parser is not None:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", tool_parser]
    if loras:
        command += ["--enable-lora", "--lora-modules", *(f"{name}={p}" for name, p in loras.items())]
        command += ["--max-lora-rank", str(_lora_rank(configs)), "--max-loras", str(len(loras))]
    command += list(extra_args)
    return VllmPlan(
        command=command,
        model_id=model_id,
        adapters={name: str(p) for name, p in loras.items()},
        chat_template=str(template_file) if template_file is not None else None,
        base_model=base,
        served_model_name=served_name,
        context_length=context_length,
        tool_parser=tool_parser,
        env={"VLLM_API_KEY": api_key} if api_key else {},
    )


def run(
    plan: VllmPlan, *, popen: Callable[..., subprocess.Popen] = subprocess.Popen, grace_s: float = STOP_GRACE_S
) -> int:
    """Start the server (it inherits stdin/stdout/stderr), wait for it, return its exit status (128 + N for a
    child ended by signal N, as a shell reports it). Ctrl-C stops it: SIGTERM, then SIGKILL after `grace_s`."""
    logger.info("starting vLLM serving %s: %s", ", ".join(plan.model_ids()), plan.display())
    process = popen(plan.command, env={**os.environ, **plan.env})
    try:
        code = process.wait()
    except KeyboardInterrupt:
        code = _stop(process, grace_s)
    return 128 - code if code < 0 else code


def _stop(process: subprocess.Popen, grace_s: float) -> int:
    # The terminal's Ctrl-C has usually reached the child as well. SIGTERM, not a second SIGINT: uvicorn takes a
    # second SIGINT as "exit now" and skips its shutdown, SIGTERM it handles like the first.
    logger.info("stopping vLLM (up to %.0f s)", grace_s)
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=grace_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C: don't wait any longer
        logger.warning("vLLM did not stop; killing it")
        process.kill()
        return process.wait()


def _tool_parser(template: str | None, extra_args: Sequence[str]) -> str | None:
    """vLLM's tool call parser for the layout `template` writes, unless the extra arguments choose one."""
    if any(arg.split("=")[0] in ("--tool-call-parser", "--tool-parser-plugin") for arg in extra_args):
        return None
    fmt = format_for_template(template)
    return TOOL_PARSERS[fmt.name] if fmt is not None else None


def _masked(command: list[str]) -> list[str]:
    shown = list(command)
    for i, arg in enumerate(shown):
        if arg == "--api-key" and i + 1 < len(shown):
            shown[i + 1] = "***"
        elif arg.startswith("--api-key="):  # the same option passed through extra_args
            shown[i] = "--api-key=***"
    return shown


def _lora_config(path: Path, label: str) -> dict[str, Any]:
    """The adapter's config, refused where vLLM would refuse it (vLLM's error only comes after loading the base)."""
    config = json.loads((path / "adapter_config.json").read_text())
    kind = config.get("peft_type")
    if kind != "LORA":
        raise UserError(f"{label}: a {kind} adapter; {_UNSUPPORTED}")
    if config.get("use_dora"):
        raise UserError(f"{label}: a DoRA adapter; {_UNSUPPORTED}")
    return config


def _lora_rank(configs: list[dict[str, Any]]) -> int:
    """The smallest --max-lora-rank vLLM accepts that fits every adapter (per-module ranks included)."""
    rank = max(max([int(c.get("r") or 8), *(int(r) for r in (c.get("rank_pattern") or {}).values())]) for c in configs)
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise UserError(f"an adapter has LoRA rank {rank}; vLLM serves ranks up to {LORA_RANKS[-1]}; use --engine embedded")


def _chat_template(dirs: list[Path]) -> str | None:
    """The first directory's saved chat template: `chat_template.jinja` (newer transformers), else
    tokenizer_config.json's `chat_template` (a string, or named templates of which "default" is the chat one)."""
    for directory in dirs:
        jinja = directory / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        config = directory / "tokenizer_config.json"
        if not config.is_file():
            continue
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, list):
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if isinstance(template, str) and template:
            return template
    return None
