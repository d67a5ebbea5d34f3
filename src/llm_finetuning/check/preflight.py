"""`llmft check CONFIG`: every pre-flight check in order; the CLI renders the report."""

from __future__ import annotations

import logging

from llm_finetuning.check.config_checks import check_backend, check_fast_path, check_learning_rate
from llm_finetuning.check.data_checks import sample_sources
from llm_finetuning.check.report import CheckReport
from llm_finetuning.config.schema import Config
from llm_finetuning.errors import UserError

logger = logging.getLogger(__name__)
SAMPLE_ROWS = 200
REWARD_SAMPLE = 4


def run_checks(config: Config, rows: int = SAMPLE_ROWS, gpu: str | None = None, gpus: int = 1) -> CheckReport:
    """Check `config` on a sample of `rows` rows per data source; nothing is trained or written. With `gpu` (a
    row of the estimate's GPU table), a config whose memory estimate does not fit that GPU is an error."""
    from llm_finetuning.methods import METHODS
    from llm_finetuning.models.loading import load_tokenizer, prepare_tokenizer

    # GRPO and PPO measure prompts alone; GRPO's own prompt limit applies when set.
    limit = getattr(config.method, "max_prompt_length", None) or config.data.max_length
    report = CheckReport(max_length=limit)
    check_learning_rate(config, report)
    check_backend(config, report)
    check_fast_path(config, report)
    method = METHODS[config.method.name]
    try:
        tokenizer = load_tokenizer(config.model)
    except UserError as exc:
        report.add("error", "model.name", str(exc))
        return report
    had_template = bool(tokenizer.chat_template)
    try:
        changes = prepare_tokenizer(tokenizer, config.data.chat_template, require_template=method.needs_chat_template)
    except UserError as exc:
        report.add("error", "data.chat_template", str(exc))
        return report
    if method.needs_chat_template and not had_template and config.model.name != "tiny":
        report.add(
            "warning",
            "model.name",
            f"`{config.model.name}` has no chat template (a base model): `data.chat_template` installs one whose "
            f"special tokens{' ' + ', '.join(changes.added_tokens) if changes.added_tokens else ''} the model has "
            "never seen. That works, but an instruct model of the same family learns the format far faster.",
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id and not method.runs_itself:
        report.add("error", "tokenizer", "the pad token is the EOS token: EOS would be masked out with the padding.")
    for note in changes.notes:
        report.add("info", "tokenizer", note)
    report.tokenizer = tokenizer
    if method.needs_chat_template:
        _check_export_template(tokenizer, report)
    records = sample_sources(config, tokenizer, report, rows)
    if config.method.name == "grpo" and records["train"]:
        _check_rewards(config, records["train"][:REWARD_SAMPLE], report)
    _check_memory(config, report, gpu, gpus)
    return report


def _check_memory(config: Config, report: CheckReport, gpu: str | None, gpus: int) -> None:
    from llm_finetuning.estimate import estimate

    try:
        result = estimate(config, gpu=gpu, gpus=gpus)
    except UserError as exc:
        level = "error" if gpu else "warning"  # asked to check a GPU: not knowing is a failure
        report.add(level, "memory estimate", f"not available: {exc}")
        return
    report.estimate = result
    peak = result.memory.total / 2**30
    if gpu is None:
        fitting = ", ".join(g.name for g in result.fitting_gpus()) or "none of the table's GPUs"
        report.add("info", "memory estimate", f"{peak:.1f} GiB per device at peak; fits {fitting}")
    elif result.fits:
        report.add("info", "memory estimate", f"{peak:.1f} GiB per device at peak: fits {result.gpu.name}")
    else:
        report.add(
            "error",
            "memory estimate",
            f"{peak:.1f} GiB per device at peak does not fit {result.gpu.name} "
            f"({result.gpu.memory_bytes / 2**30:.0f} GiB); `llmft estimate CONFIG --gpu {gpu}` suggests changes "
            "that fit.",
        )


def _check_rewards(config: Config, rows: list[dict], report: CheckReport) -> None:
    from llm_finetuning.methods.grpo import rewards

    try:
        checked, _ = rewards(config, rows)
    except UserError as exc:
        report.add("error", "method.rewards", str(exc))
        return
    report.add("info", "method.rewards", f"{len(checked)} rewards return one finite float per sample completion")


def _check_export_template(tokenizer, report: CheckReport) -> None:  # noqa: ANN001 - a transformers tokenizer
    """The exports carry the training template: GGUF and hf embed the Jinja itself; Ollama needs a Go template
    derived from it, checked here to render the probe conversations exactly as training does."""
    from llm_finetuning.export.ollama_template import ollama_chat

    try:
        chat = ollama_chat(tokenizer, runtime_adds_bos=bool(getattr(tokenizer, "add_bos_token", False)))
    except UserError as exc:
        report.add("warning", "data.chat_template", f"`llmft export --format ollama` would refuse it: {exc}")
        return
    for note in chat.notes:
        report.add("warning", "data.chat_template", f"Ollama export: {note}")
    report.add(
        "info",
        "data.chat_template",
        f"the exported Ollama template renders {chat.probes} probe conversations exactly as training does "
        f"(stops: {', '.join(chat.stops)}); GGUF and hf exports embed the training template itself",
    )
