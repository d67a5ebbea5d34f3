"""`llmft data clean` over a folder of shards, as a datatrove pipeline of four stages:

1. features (parallel): each task reads its shards a row at a time and keeps what the decisions need per row:
   the quality problem, the exact-dedup key, the MinHash signature and the eval items it shares n-grams with;
2. decide (one task): the removals over the whole corpus, in the order of the rows (shards by name, rows in
   file order), with the same functions as the in-process run, so the first of each cluster is kept;
3. write (parallel): each task reads its shards again, drops the removed rows, redacts PII and writes them;
4. report (one task): the report of the whole run, as the in-process run writes it.

No stage holds the corpus: a task holds one batch of rows at a time, the decide stage 16 bytes of key plus one
signature per row (512 bytes at 128 permutations). The result equals `clean_records` on all shards
concatenated. datatrove runs the stages locally (processes), on Slurm or on Ray; a rerun with the same inputs
and options resumes, skipping the tasks that completed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from llm_finetuning.data.clean.config import CleanConfig, ShardedRunConfig
from llm_finetuning.data.clean.decontaminate import Contamination, EvalIndex, contaminated
from llm_finetuning.data.clean.exact import exact_key, repeated_keys
from llm_finetuning.data.clean.minhash import MinHasher, band_shape, find_near_duplicates
from llm_finetuning.data.clean.pipeline import (
    Ledger,
    contamination_note,
    contamination_removals,
    exact_note,
    exact_removals,
    near_note,
    near_removals,
    pii_event,
    quality_note,
    skipped_decontamination_note,
)
from llm_finetuning.data.clean.quality import quality_problems
from llm_finetuning.data.clean.report import CleanReport, Event, StepStats
from llm_finetuning.data.reading import SUFFIXES, data_files
from llm_finetuning.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

REPORT_NAME = "clean_report.json"
_PLAN = "plan.json"


def list_shards(folder: Path) -> list[str]:
    """The data files under `folder` (any depth), relative and sorted: the order of the rows."""
    names = [path.relative_to(folder).as_posix() for path in data_files(folder)]
    if not names:
        raise DataError(f"{folder}: no data files ({', '.join(SUFFIXES)}, optionally .gz) in this folder")
    return names


def output_name(shard: str, output_format: str) -> str:
    """`part-1.jsonl.gz` -> `part-1.jsonl` (or `.parquet`): the shard's name and folder, the output's type."""
    path = Path(shard)
    stem = path.name[: -len("".join(path.suffixes))] if path.suffixes else path.name
    return (path.parent / f"{stem}.{output_format}").as_posix()


def eval_index(plan: dict[str, Any], config: CleanConfig) -> EvalIndex | None:
    if not config.decontaminate.enabled or not plan["eval_texts"]:
        return None
    return EvalIndex(list(plan["eval_texts"].values()), config.decontaminate.ngram)


def features_of(batch: list[Any], config: CleanConfig, hasher: MinHasher, index: EvalIndex | None) -> dict[str, Any]:
    texts = [document.text for document in batch]
    out: dict[str, Any] = {
        "shard": np.array([d.metadata["shard"] for d in batch], dtype=np.int32),
        "row": np.array([d.metadata["row"] for d in batch], dtype=np.int64),
        "where": [d.metadata["where"] for d in batch],
        "quality": quality_problems(texts, config.quality),
        "contamination": [],
    }
    if config.dedup.exact:
        out["keys"] = np.frombuffer(b"".join(exact_key(text) for text in texts), dtype=np.uint8).reshape(-1, 16)
    if config.near_dedup.enabled:
        out["signatures"], out["valid"] = hasher.signatures(texts)
    if index is not None:
        found = contaminated(texts, index, config.decontaminate.min_matches)
        out["contamination"] = [(item.index, item.eval_index, item.matches) for item in found]
    return out


def save_features(stem: Path, parts: list[dict[str, Any]], config: CleanConfig) -> None:
    """One .npz of arrays and one .json of the rest per task, written whole (temporary name, then renamed)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(part["row"]) for part in parts])
    empty = {"shard": np.zeros(0, np.int32), "row": np.zeros(0, np.int64)}  # shapes for a task with no rows
    if config.dedup.exact:
        empty["keys"] = np.zeros((0, 16), np.uint8)
    if config.near_dedup.enabled:
        empty["signatures"] = np.zeros((0, config.near_dedup.num_perm), np.uint32)
        empty["valid"] = np.zeros(0, bool)
    arrays = {key: np.concatenate([none] + [part[key] for part in parts]) for key, none in empty.items()}
    rest = {
        "where": [where for part in parts for where in part["where"]],
        "quality": {
            str(int(offset) + position): problem
            for offset, part in zip(offsets, parts, strict=False)
            for position, problem in part["quality"].items()
        },
        "contamination": [
            [int(offset) + position, eval_index, matches]
            for offset, part in zip(offsets, parts, strict=False)
            for position, eval_index, matches in part["contamination"]
        ],
    }
    with open(f"{stem}.npz.part", "wb") as handle:
        np.savez(handle, **arrays)
    Path(f"{stem}.json.part").write_text(json.dumps(rest, ensure_ascii=False), encoding="utf-8")
    Path(f"{stem}.npz.part").replace(f"{stem}.npz")
    Path(f"{stem}.json.part").replace(f"{stem}.json")


def _load_features(work: Path) -> dict[str, Any]:
    """Every task's features, in row order (shard, then row)."""
    arrays: dict[str, list[np.ndarray]] = {}
    where: list[str] = []
    quality: dict[int, str] = {}
    contamination: list[tuple[int, int, int]] = []
    start = 0
    for path in sorted((work / "features").glob("*.npz")):
        with np.load(path) as loaded:
            for key in loaded.files:
                arrays.setdefault(key, []).append(loaded[key])
            count = len(loaded["row"])
        rest = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        where += rest["where"]
        quality.update({start + int(position): problem for position, problem in rest["quality"].items()})
        contamination += [(start + position, item, matches) for position, item, matches in rest["contamination"]]
        start += count
    joined = {key: np.concatenate(parts) for key, parts in arrays.items()}
    order = np.lexsort((joined["row"], joined["shard"]))
    rank_of = np.empty_like(order)
    rank_of[order] = np.arange(len(order))
    return {
        "count": len(order),
        "shard": joined["shard"][order],
        **{key: joined[key][order] for key in ("keys", "signatures", "valid") if key in joined},
        "where": [where[i] for i in order.tolist()],
        "quality": {int(rank_of[position]): problem for position, problem in quality.items()},
        "contamination": sorted((int(rank_of[p]), item, matches) for p, item, matches in contamination),
    }


def decide(plan: dict[str, Any]) -> None:
    """The removals over the whole corpus, step by step as `clean_records` takes them; writes decisions.json."""
    work = Path(plan["work"])
    config = CleanConfig.model_validate(plan["clean"])
    features = _load_features(work)
    ledger = Ledger(features["count"], config, lambda index: features["where"][index])

    started = time.perf_counter()
    ledger.step("quality", {i: (p, {}) for i, p in features["quality"].items()}, started, quality_note(config.quality))

    started, removals = time.perf_counter(), {}
    if config.dedup.exact:
        keys = features["keys"][ledger.alive]
        removals = exact_removals(ledger.alive, repeated_keys(bytes(key) for key in keys))
    ledger.step("exact_dedup", removals, started, exact_note(config.dedup))

    started, removals, settings = time.perf_counter(), {}, config.near_dedup
    if settings.enabled:
        alive = ledger.alive
        found = find_near_duplicates(
            features["signatures"][alive], features["valid"][alive], settings.threshold, band_shape(settings)
        )
        removals = near_removals(alive, found)
    ledger.step("near_dedup", removals, started, near_note(settings))

    started, removals, settings = time.perf_counter(), {}, config.decontaminate
    if not settings.enabled or not plan["eval_texts"]:
        note = skipped_decontamination_note(settings)
    else:
        position = {index: spot for spot, index in enumerate(ledger.alive)}
        found = [
            Contamination(position[index], item, matches)
            for index, item, matches in features["contamination"]
            if index in position
        ]
        removals = contamination_removals(ledger.alive, found, list(plan["eval_texts"]), settings.ngram)
        note = contamination_note(eval_index(plan, config), settings.ngram)
    ledger.step("decontaminate", removals, started, note)

    shard_of = features["shard"]
    first_row = {}  # each shard's first position in row order: row = position - first_row[shard]
    for position, number in enumerate(shard_of.tolist()):
        first_row.setdefault(number, position)
    removed: dict[int, list[int]] = {}
    for event in ledger.report.removed:
        number = int(shard_of[event.index])
        removed.setdefault(number, []).append(event.index - first_row[number])
    decisions = {
        "count": features["count"],
        "first_row": {str(k): v for k, v in first_row.items()},
        "alive": len(ledger.alive),
        "removed": {str(k): v for k, v in removed.items()},
        "events": [event.to_dict() for event in ledger.report.events],
        "steps": [step.to_dict() for step in ledger.report.steps],
    }
    _write_whole(work / "decisions.json", json.dumps(decisions, ensure_ascii=False))


def write_report(plan: dict[str, Any]) -> CleanReport:
    """The report of the run (OUTPUT/clean_report.json): decisions plus the PII changes of every task."""
    work = Path(plan["work"])
    config = CleanConfig.model_validate(plan["clean"])
    decisions = json.loads((work / "decisions.json").read_text(encoding="utf-8"))
    report = CleanReport(
        decisions["count"],
        [StepStats.from_dict(step) for step in decisions["steps"]],
        [Event.from_dict(event) for event in decisions["events"]],
        config.model_dump(mode="json"),
    )
    changed = 0
    for path in sorted((work / "pii").glob("*.json")):
        for number, row, where, counts in json.loads(path.read_text(encoding="utf-8")):
            report.events.append(pii_event(decisions["first_row"][str(number)] + row, counts, where))
            changed += 1
    alive = decisions["alive"]
    report.steps.append(StepStats("pii", alive, alive, changed, note=None if config.pii.enabled else "disabled"))
    report.write(Path(plan["output"]) / REPORT_NAME)
    return report


def _write_whole(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


# --- the run ------------------------------------------------------------------------------------------------


def make_plan(
    input_dir: Path,
    output_dir: Path,
    clean: CleanConfig,
    run: ShardedRunConfig,
    eval_texts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the tasks need, as plain data; its fingerprint tells a resumable rerun from a different run."""
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: not a folder (a sharded clean reads a folder of data files)")
    shards = list_shards(input_dir)
    work = Path(run.work_dir) if run.work_dir else output_dir / ".llmft-clean"
    plan = {
        "input": str(input_dir.resolve()),
        "output": str(output_dir.resolve()),
        "work": str(work.resolve()),
        "shards": shards,
        "sizes": [(input_dir / name).stat().st_size for name in shards],
        "clean": clean.model_dump(mode="json"),
        "output_format": run.output_format,
        "eval_texts": eval_texts or {},
    }
    plan["fingerprint"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    return plan


def executor_for(run: ShardedRunConfig, pipeline: list[Any], tasks: int, logs: Path, name: str, depends: Any):
    common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": str(logs / name), "depends": depends}
    if run.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(**common, workers=min(run.workers, tasks))
    if run.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        missing = [key for key in ("partition", "time") if key not in run.slurm]
        if missing:
            raise ConfigError(f"executor.slurm: {', '.join(missing)} required (e.g. partition: cpu, time: '02:00:00')")
        return SlurmPipelineExecutor(**common, job_name=f"llmft-clean-{name}", **run.slurm)
    import ray
    from datatrove.executor import RayPipelineExecutor

    options = dict(run.ray)
    address = options.pop("address", None)
    if not ray.is_initialized():  # a cluster by address ("auto": the one this machine belongs to), else local
        ray.init(address=address)
    return RayPipelineExecutor(**common, **options)


def clean_shards(
    input_dir: Path,
    output_dir: Path,
    clean: CleanConfig,
    run: ShardedRunConfig | None = None,
    eval_texts: dict[str, str] | None = None,
) -> CleanReport | None:
    """Clean a folder of shards into `output_dir` (same names and folders, `run.output_format`) and write
    `output_dir/clean_report.json`. Returns the report, or None for Slurm (the jobs are submitted; the report is
    written by the last one)."""
    try:
        from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

        from llm_finetuning.data.clean.datatrove_steps import Apply, Decide, Features, Report, record_of
    except ImportError as error:
        raise ConfigError("a sharded clean runs on datatrove: `pip install datatrove`") from error
    run = run or ShardedRunConfig()
    plan = make_plan(input_dir, output_dir, clean, run, eval_texts)
    work = Path(plan["work"])
    _claim(output_dir, work, plan)
    tasks = min(run.tasks or len(plan["shards"]), len(plan["shards"]))
    writer = (ParquetWriter if run.output_format == "parquet" else JsonlWriter)(
        str(output_dir), output_filename="${output}", adapter=record_of, **_writer_options(run.output_format)
    )
    logs = work / "logs"
    stage1 = executor_for(run, [Features(plan)], tasks, logs, "features", None)
    stage2 = executor_for(run, [Decide(plan)], 1, logs, "decide", stage1)
    stage3 = executor_for(run, [Apply(plan), writer], tasks, logs, "write", stage2)
    stage4 = executor_for(run, [Report(plan)], 1, logs, "report", stage3)
    logger.info("clean: %d shards, %d tasks, %s executor; work in %s", len(plan["shards"]), tasks, run.executor, work)
    stage4.run()
    if run.executor == "slurm":
        return None
    path = output_dir / REPORT_NAME
    if not path.is_file():
        raise DataError(f"the sharded clean did not finish: see the task logs in {logs}")
    return CleanReport.read(path)  # written by the report stage


def _writer_options(output_format: str) -> dict[str, Any]:
    # One output file per shard: no size limit (ParquetWriter splits at 5 GB and numbers the parts otherwise).
    return {"max_file_size": -1} if output_format == "parquet" else {"compression": None}


def _claim(output_dir: Path, work: Path, plan: dict[str, Any]) -> None:
    """An empty (or new) output folder, or the work folder of this same run (a resume)."""
    saved = work / _PLAN
    if saved.is_file():
        previous = json.loads(saved.read_text(encoding="utf-8")).get("fingerprint")
        if previous != plan["fingerprint"]:
            raise ConfigError(
                f"{work} holds another cleaning run (different inputs or options); remove it or choose another "
                "output folder"
            )
        logger.info("clean: resuming the run in %s", work)
        return
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"{output_dir}: the output folder is not empty; choose a new one or empty it")
    if work.exists():
        shutil.rmtree(work)
    _write_whole(saved, json.dumps({"fingerprint": plan["fingerprint"], "shards": plan["shards"]}))
