"""`llmft data`: inspect, convert, clean, mine hard negatives, validate OpenAI fine-tuning files, list datasets."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from llm_finetuning.cli.common import console, masked_text, user_errors

app = typer.Typer(help="Inspect, convert and clean data.", no_args_is_help=True)


def _columns(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--column {item}: expected FIELD=COLUMN")
        out[key] = value
    return out


@app.command("inspect")
@user_errors
def inspect(
    target: str = typer.Argument(..., help="A data file, a named dataset, or a hub dataset id."),
    fmt: str = typer.Option(None, "--format", help="Row format; detected from the columns when omitted."),
    column: list[str] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN (repeatable)."),
    tokenizer: str = typer.Option("builtin", help="Tokenizer directory or hub id for lengths and the mask preview."),
    chat_template: str = typer.Option(None, help="Built-in template name or Jinja string if the tokenizer has none."),
    max_rows: int = typer.Option(None, help="Read only the first N rows."),
) -> None:
    """Detected format, row counts, token-length histogram, and an example with its trained tokens highlighted."""
    from llm_finetuning.config.schema import ModelConfig
    from llm_finetuning.data.inspect import histogram, inspect_source, source_for
    from llm_finetuning.models.loading import load_tokenizer, prepare_tokenizer

    source = source_for(target, fmt, _columns(column))
    tok = load_tokenizer(ModelConfig(name="tiny", tokenizer=tokenizer))
    prepare_tokenizer(tok, chat_template)
    report = inspect_source(source, tok, max_rows)
    stats = report.stats
    console.print(
        f"[bold]{escape(source.label)}[/]: format [bold]{report.format}[/] ({report.kind} records)", soft_wrap=True
    )
    console.print(f"rows: {stats.rows}   usable: {stats.rows - stats.skipped_bad_rows}   bad: {stats.skipped_bad_rows}")
    for message in stats.bad_rows[:5]:
        console.print(f"  [red]bad[/] {escape(message)}", soft_wrap=True)
    if report.lengths:
        table = Table(title=f"tokens per example ({tokenizer})", header_style="bold")
        for name in ("tokens", "examples", ""):
            table.add_column(name)
        buckets = histogram(report.lengths)
        peak = max(count for _, _, count in buckets) or 1
        for low, high, count in buckets:
            table.add_row(f"{low}-{high}", str(count), "#" * round(30 * count / peak))
        console.print(table)
        trained = (
            f"; mean trained (loss) tokens {sum(report.trained_tokens) / len(report.trained_tokens):.0f}"
            if report.trained_tokens
            else ""
        )
        console.print(
            f"max {max(report.lengths)} tokens, mean {sum(report.lengths) / len(report.lengths):.0f}{trained}"
        )
    if report.example is not None:
        console.print("\nexample ([green]green[/] tokens carry loss):")
        text = masked_text(report.example, tok)
        console.print(text)


@app.command("convert")
@user_errors
def convert(
    source_path: str = typer.Argument(..., help="Input file."),
    output: str = typer.Argument(..., help="Output file (.jsonl, .json, .csv, .parquet; .gz compresses)."),
    to: str = typer.Option(..., "--to", help="Output format."),
    fmt: str = typer.Option(None, "--format", help="Input format; detected when omitted."),
    column: list[str] = typer.Option(None, "--column", help="Input column mapping FIELD=COLUMN (repeatable)."),
    skip_bad_rows: bool = typer.Option(False, help="Skip rows that cannot be converted (they are listed)."),
) -> None:
    """Convert a data file between formats of the same kind (e.g. sharegpt -> messages)."""
    from pathlib import Path

    from llm_finetuning.data.convert import check_convertible, from_record, write_rows
    from llm_finetuning.data.formats import FORMAT_KIND, RowError
    from llm_finetuning.data.inspect import source_for
    from llm_finetuning.data.pipeline import SplitStats, load_records
    from llm_finetuning.errors import DataError

    if to not in FORMAT_KIND:
        raise DataError(f"--to {to}: unknown format; choose one of {', '.join(FORMAT_KIND)}")
    source = source_for(source_path, fmt, _columns(column))
    check_convertible(source.format, to)
    stats = SplitStats()
    records = load_records(source, "skip" if skip_bad_rows else "fail", stats, FORMAT_KIND[source.format])
    rows = []
    for where, record in records:
        try:
            rows.append(from_record(record, to))
        except RowError as exc:
            if not skip_bad_rows:
                raise DataError(f"{where}: {exc} (pass --skip-bad-rows to skip such rows)") from None
            stats.skipped_bad_rows += 1
            stats.bad_rows.append(f"{where}: {exc}")
    write_rows(rows, Path(output))
    console.print(
        f"wrote {len(rows)} rows ({source.format} -> {to}) to {output}; skipped {stats.skipped_bad_rows}",
        soft_wrap=True,
        highlight=False,
    )
    for message in stats.bad_rows:
        console.print(f"  skipped {escape(message)}", soft_wrap=True)


@app.command("datasets")
def datasets() -> None:
    """The named datasets of the collection: hub id, splits, record kinds."""
    from llm_finetuning.data.datasets import registry

    table = Table(header_style="bold")
    for name in ("name", "hub id", "subset", "splits", "records", "description"):
        table.add_column(name, overflow="fold")
    for name, item in sorted(registry().items()):
        splits = ", ".join(f"{k}={v}" for k, v in item.splits.items())
        table.add_row(name, item.hub_id, item.subset or "", splits, ", ".join(item.converters), item.description)
    console.print(table)


@app.command("clean")
@user_errors
def clean(
    source_path: str = typer.Argument(..., help="Input file (any supported format), or a folder of shards."),
    output: str = typer.Argument(..., help="Cleaned file (.jsonl, .json, .csv, .parquet), or a folder for shards."),
    config: str = typer.Option(
        None, "--config", help="YAML file: the cleaning options (a `clean:` mapping) and, for shards, `executor:`."
    ),
    against: list[str] = typer.Option(None, "--against", help="Eval file to decontaminate against (repeatable)."),
    report: str = typer.Option(None, "--report", help="Where to write the JSON report (default: OUTPUT.report.json)."),
    executor: str = typer.Option(None, "--executor", help="Shards: local, slurm or ray (default: local)."),
    tasks: int = typer.Option(None, "--tasks", min=1, help="Shards: parallel tasks (default: one per shard)."),
    workers: int = typer.Option(None, "--workers", min=1, help="Shards, local: tasks at once (default 1)."),
) -> None:
    """Deduplicate, filter, redact PII and decontaminate a data file, or a folder of shards as a datatrove
    pipeline (same result as the shards concatenated); every removal and change is reported."""
    from pathlib import Path

    import yaml

    from llm_finetuning.data.clean import CleanConfig, clean_records, default_text_of
    from llm_finetuning.data.clean.config import ShardedRunConfig
    from llm_finetuning.data.convert import write_rows
    from llm_finetuning.data.reading import Row, read_rows
    from llm_finetuning.errors import ConfigError, DataError

    options: dict = {}
    run_options: dict = {}
    if config:
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        options = loaded.get("clean", loaded) if isinstance(loaded, dict) else {}
        run_options = dict(loaded.get("executor") or {}) if isinstance(loaded, dict) and "clean" in loaded else {}
    for key, value in (("executor", executor), ("tasks", tasks), ("workers", workers)):
        if value is not None:
            run_options[key] = value
    try:
        clean_config = CleanConfig.model_validate(options)
        run_config = ShardedRunConfig.model_validate(run_options)
    except ValueError as exc:  # pydantic's ValidationError: name the file and the keys
        raise ConfigError(f"{config or 'command line'}: invalid cleaning options:\n{exc}") from None
    eval_texts = {}
    for path in against or []:
        for item in read_rows(path):
            if isinstance(item, Row):
                eval_texts[item.where] = default_text_of(item.data)
    if Path(source_path).is_dir():
        from llm_finetuning.data.clean.sharded import clean_shards

        result = clean_shards(Path(source_path), Path(output), clean_config, run_config, eval_texts or None)
        if result is None:
            console.print(f"submitted to Slurm; the report will be {Path(output) / 'clean_report.json'}")
            return
        console.print(result.summary(), highlight=False, markup=False)
        console.print(f"wrote {result.output_count} of {result.input_count} rows to {output}/", soft_wrap=True)
        return
    if run_options:
        raise ConfigError(f"{source_path}: executor options apply to a folder of shards, not to one file")
    rows = []
    for item in read_rows(source_path):
        if isinstance(item, DataError):
            raise item
        rows.append({**item.data, "_where": item.where})
    result = clean_records(rows, clean_config, eval_texts=eval_texts or None)
    write_rows([{k: v for k, v in r.items() if k != "_where"} for r in result.records], Path(output))
    report_path = Path(report or f"{output}.report.json")
    result.report.write(report_path)
    console.print(result.report.summary(), highlight=False, markup=False)
    console.print(f"wrote {len(result.records)} of {len(rows)} rows to {output}; report: {report_path}", soft_wrap=True)


@app.command("tokenize")
@user_errors
def tokenize(
    config: str = typer.Argument(..., help="A `method: pretrain` config whose data.train path is a folder of shards."),
    output: str = typer.Argument(..., help="Folder for the token shards (Parquet) and llmft_tokens.json."),
    executor: str = typer.Option("local", "--executor", help="local or ray."),
    tasks: int = typer.Option(None, "--tasks", min=1, help="Parallel tasks (default: one per shard)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Local: tasks at once."),
) -> None:
    """Tokenize a pretraining corpus as a datatrove pipeline; point data.train.path at OUTPUT (with
    data.streaming) to train on the token ids without tokenizing again."""
    from pathlib import Path

    from llm_finetuning.config.loading import load_config
    from llm_finetuning.data.clean.config import ShardedRunConfig
    from llm_finetuning.data.tokenize_shards import tokenize_shards

    run_config = ShardedRunConfig(executor=executor, tasks=tasks, workers=workers)
    marker = tokenize_shards(load_config(config), Path(output), run_config)
    console.print(f"tokenized {len(marker['shards'])} shards into {output} ({marker['tokenizer']})", soft_wrap=True)


@app.command("mine-negatives")
@user_errors
def mine_negatives(
    source_path: str = typer.Argument(..., help="(query, positive) rows: .jsonl, .json, .csv or .parquet."),
    model: str = typer.Option(..., "--model", help="SentenceTransformer: path, hub id or an embedding run."),
    output: str = typer.Option(..., "--output", help="Output file of `retrieval` rows (query, positive, negatives)."),
    corpus: str = typer.Option(
        None, "--corpus", help="File of candidate documents (`text` column); default: the positives."
    ),
    num_negatives: int = typer.Option(3, "--num-negatives", min=1, help="Negatives per row."),
    relative_margin: float = typer.Option(
        None,
        "--relative-margin",
        help="False-negative guard: drop candidates within this share of the positive's score (default 0.05).",
    ),
    absolute_margin: float = typer.Option(
        None, "--absolute-margin", help="Guard: drop candidates within this score of the positive."
    ),
    max_score: float = typer.Option(None, "--max-score", help="Guard: drop candidates scoring above this."),
    range_min: int = typer.Option(0, "--range-min", min=0, help="Skip the N most similar candidates."),
    range_max: int = typer.Option(None, "--range-max", min=1, help="Consider only the N most similar candidates."),
    sampling: str = typer.Option("top", "--sampling", help="`top` (the hardest) or `random` (among the candidates)."),
    cross_encoder: str = typer.Option(None, "--cross-encoder", help="A CrossEncoder that rescores the candidates."),
    min_negatives: int = typer.Option(0, "--min-negatives", min=0, help="Drop rows left with fewer negatives."),
    query_column: str = typer.Option("query", "--query-column", help="Column of the queries (`anchor` is found too)."),
    positive_column: str = typer.Option("positive", "--positive-column", help="Column of the positives."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Texts embedded per batch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Add hard negatives to (query, positive) rows with an embedding model, keeping sentence-transformers'
    false-negative guard; writes `retrieval` rows for `method: embedding` or `reranker`."""
    from pathlib import Path

    from llm_finetuning.data import mine_negatives as mining
    from llm_finetuning.data.convert import write_rows
    from llm_finetuning.errors import UserError

    if sampling not in ("top", "random"):
        raise UserError(f"--sampling {sampling}: use `top` or `random`")
    if relative_margin is not None and absolute_margin is not None:
        raise UserError("--relative-margin and --absolute-margin are two guards: give one")
    if Path(output).exists() and not overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it")
    settings = mining.MiningSettings(
        num_negatives=num_negatives,
        relative_margin=None if absolute_margin is not None else (0.05 if relative_margin is None else relative_margin),
        absolute_margin=absolute_margin,
        max_score=max_score,
        range_min=range_min,
        range_max=range_max,
        sampling=sampling,
        cross_encoder=cross_encoder,
        batch_size=batch_size,
        min_negatives=min_negatives,
        query_column=query_column,
        positive_column=positive_column,
    )
    pairs = mining.read_pairs(source_path, settings)  # bad rows stop here, before any model loads
    documents = mining.read_corpus(corpus) if corpus else None
    rows, report = mining.mine(pairs, mining.load_embedder(model), settings, documents)
    write_rows(rows, Path(output))
    console.print(
        f"wrote {report.written} of {report.rows} rows with {report.negatives} negatives to {output}; "
        f"{report.short_rows} rows got fewer than {num_negatives}"
        + (f", {report.dropped} dropped (--min-negatives {min_negatives})" if report.dropped else ""),
        soft_wrap=True,
        highlight=False,
    )


@app.command("validate")
@user_errors
def validate(
    path: str = typer.Argument(..., help="A JSONL file for OpenAI's fine-tuning API."),
    openai: bool = typer.Option(False, "--openai", help="Check with OpenAI's fine-tuning data rules."),
    method: str = typer.Option("auto", "--method", help="auto (from the first example), supervised or dpo."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Tokenizer (folder or hub id) to count tokens with."),
    max_length: int = typer.Option(None, "--max-length", min=1, help="Examples over this many tokens are reported."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a file as `POST /v1/files` of `llmft jobs` does: every problem with its line; exit 1 on errors."""
    import json

    from llm_finetuning.data.openai_rules import detect_method, validate_openai_file
    from llm_finetuning.errors import UserError

    if not openai:
        raise UserError("only --openai is supported: `llmft check CONFIG` validates llmft configs and their data")
    if method not in ("auto", "supervised", "dpo"):
        raise UserError(f"--method {method}: choose auto, supervised or dpo")
    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except OSError as exc:
            raise UserError(f"--tokenizer {tokenizer}: cannot load it ({exc})") from None
    chosen = detect_method(path) if method == "auto" else method
    report = validate_openai_file(path, chosen, tokenizer=tok, max_length=max_length)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        console.print(escape(report.summary()), highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command("label-preferences")
@user_errors
def label_preferences(
    source_path: str = typer.Argument(..., help="JSONL of {prompt, completions: [at least two texts]}."),
    judge_config: str = typer.Option(..., "--judge-config", help="YAML of the judge section (endpoint, model...)."),
    output: str = typer.Option(..., "--output", help="Output JSONL: preference or KTO rows with provenance."),
    mode: str = typer.Option("pairwise", "--mode", help="pairwise (each pair both ways) or scored (1-5 each)."),
    fmt: str = typer.Option("preference", "--format", help="preference (chosen/rejected) or kto (labelled)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """AI feedback: a judge ranks each prompt's completions into DPO / reward-model pairs or KTO rows."""
    import json
    from pathlib import Path

    from llm_finetuning.config.judge import load_judge_config
    from llm_finetuning.data import label_preferences as labelling
    from llm_finetuning.errors import UserError
    from llm_finetuning.judge import JudgeClient

    if mode not in labelling.MODES:
        raise UserError(f"--mode {mode}: choose {' or '.join(labelling.MODES)}")
    if fmt not in labelling.FORMATS:
        raise UserError(f"--format {fmt}: choose {' or '.join(labelling.FORMATS)}")
    if Path(output).exists() and not overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it")
    rows = labelling.read_candidates(source_path)  # bad rows stop here, before any judge call
    with JudgeClient(load_judge_config(judge_config)) as client:
        labelled, stats = labelling.label_preferences(rows, client, mode, fmt, source=source_path)
        calls = client.stats.snapshot()
    labelling.write_jsonl(labelled, output)
    report = stats.as_dict()
    report["judge_calls"] = calls
    console.print(f"{stats.rows} of {stats.prompts} prompts labelled -> {escape(output)}", highlight=False)
    if stats.agreement_rate is not None:
        console.print(f"judge agreement across position swaps: {stats.agreement_rate:.1%}", highlight=False)
    console.print_json(json.dumps(report))


@app.command("generate")
@user_errors
def generate(
    config: str = typer.Argument(None, help="YAML of the generation run (teacher, task, output...)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist."),
    templates: bool = typer.Option(False, "--templates", help="Print the built-in prompt templates and exit."),
) -> None:
    """Synthetic data from a teacher endpoint: self-instruct, Evol-Instruct, distillation with rejection
    sampling, multi-turn conversations, Constitutional-AI revisions; cleaned, with provenance and cost."""
    import json

    from llm_finetuning.errors import UserError
    from llm_finetuning.synth import generate_data, load_generate_config
    from llm_finetuning.synth.templates import BUILTIN

    if templates:
        for name, text in BUILTIN.items():
            console.print(f"[bold]{name}[/]\n{escape(text)}\n", soft_wrap=True, highlight=False)
        return
    if config is None:
        raise UserError("give the generation config: llmft data generate CONFIG (docs/data-generation.md)")
    settings = load_generate_config(config, {"overwrite": True} if overwrite else None)
    result = generate_data(settings)
    report = result.report
    console.print(
        f"{report['task']}: {report['rows']} rows generated from {report['inputs']} inputs; written"
        + (" after cleaning: " if settings.clean.enabled else ": ")
        + ", ".join(f"{escape(path)} ({report['written'][name]} rows)" for name, path in result.outputs.items()),
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"teacher tokens: {report['tokens']['prompt']} prompt + {report['tokens']['completion']} completion; "
        f"cost {report['cost']:.4f}; report: {escape(result.report_path)}",
        soft_wrap=True,
        highlight=False,
    )
    if report["dropped"]:
        console.print(f"dropped: {json.dumps(report['dropped'])}", soft_wrap=True, highlight=False)
