"""`llmft data clean FOLDER OUT`: a datatrove pipeline over shards whose output and report equal the in-process
cleaning of the shards concatenated; duplicates across shards are found, bad rows stop it with their line."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.data.clean import CleanConfig, clean_records
from llm_finetuning.data.clean.config import ShardedRunConfig
from llm_finetuning.data.clean.sharded import clean_shards, list_shards, output_name
from llm_finetuning.data.reading import read_rows
from llm_finetuning.errors import ConfigError, DataError
from tests.conftest import shared

pytest.importorskip("datatrove")

pytestmark = pytest.mark.e2e

OPTIONS = {
    "quality": {"min_words": 4},
    "decontaminate": {"ngram": 8},
}


def corpus() -> tuple[list[dict], list[str]]:
    """Real GSM8K rows with planted exact and near duplicates (far from their source: across shards), a short
    row, two rows with PII and two that contain an eval question."""
    rows = [json.loads(line) for line in shared("gsm8k/train.jsonl").read_text().splitlines()[:1200]]
    evals = [json.loads(line)["question"] for line in shared("gsm8k/test.jsonl").read_text().splitlines()[:50]]
    rng = random.Random(3)
    planted = [dict(row) for row in rng.sample(rows, 40)]
    for row in rng.sample(rows, 30):
        words = row["answer"].split(" ")
        words[rng.randrange(len(words))] = "EDITED"
        planted.append({"question": row["question"], "answer": " ".join(words)})
    planted += [
        {"question": "Too short", "answer": "x"},
        {"question": "Write to jane.roe@example.org about the refund.", "answer": "Sure, I will email her today."},
        {"question": "Call +1 415 555 0134 for help with the order", "answer": "Calling the support line now."},
        {"question": evals[3], "answer": "copied from the test set"},
        {"question": "Also: " + evals[7], "answer": "copied too"},
    ]
    rows += planted
    rng.shuffle(rows)
    return rows, evals


def write_shards(folder, rows) -> list[str]:
    """Five shards of different types: JSONL, gzipped JSONL, Parquet, JSON and a subfolder."""
    folder.mkdir(parents=True)
    (folder / "more").mkdir()
    parts = [rows[k::5] for k in range(5)]
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in parts[0]))
    with gzip.open(folder / "b.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in parts[1])
    pq.write_table(pa.Table.from_pylist(parts[2]), folder / "c.parquet")
    (folder / "d.json").write_text(json.dumps(parts[3]))
    (folder / "more" / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in parts[4]))
    return list_shards(folder)


def in_process(folder, shards, evals):
    records = [item.data for name in shards for item in read_rows(folder / name)]
    eval_texts = {f"test.jsonl:{i + 1}": q for i, q in enumerate(evals)}
    return records, clean_records(records, CleanConfig.model_validate(OPTIONS), eval_texts=eval_texts), eval_texts


def read_output(folder, shards, output_format="jsonl"):
    rows = []
    for name in shards:
        path = folder / output_name(name, output_format)
        if path.exists():
            rows += [item.data for item in read_rows(path)]
    return rows


def comparable(report: dict) -> dict:
    events = [{k: v for k, v in event.items() if k != "where"} for event in report["events"]]
    steps = [{k: v for k, v in step.items() if k != "seconds"} for step in report["steps"]]
    return {**{k: v for k, v in report.items() if k not in ("events", "steps")}, "events": events, "steps": steps}


def test_two_local_workers_give_the_in_process_result(tmp_path):
    rows, evals = corpus()
    shards = write_shards(tmp_path / "in", rows)
    assert shards == ["a.jsonl", "b.jsonl.gz", "c.parquet", "d.json", "more/e.jsonl"]
    records, expected, eval_texts = in_process(tmp_path / "in", shards, evals)
    removed = expected.report.to_dict()["removed_by_step"]
    assert removed["exact_dedup"] >= 35 and removed["near_dedup"] >= 25 and removed["decontaminate"] == 2
    assert removed["quality"] >= 1 and len(expected.report.changed) == 2  # the planted rows are really there

    report = clean_shards(
        tmp_path / "in", tmp_path / "out", CleanConfig.model_validate(OPTIONS),
        ShardedRunConfig(tasks=3, workers=2), eval_texts,
    )  # fmt: skip
    assert read_output(tmp_path / "out", shards) == expected.records
    written = json.loads((tmp_path / "out" / "clean_report.json").read_text())
    assert comparable(written) == comparable(expected.report.to_dict())
    assert report.output_count == len(expected.records) and report.input_count == len(records)
    wheres = {event["index"]: event["where"] for event in written["events"]}
    first = expected.report.removed[0]
    assert wheres[first.index].split("/")[-1].startswith(tuple(name.split("/")[-1] for name in shards))
    assert len(list((tmp_path / "out" / ".llmft-clean" / "features").glob("*.npz"))) == 3  # one per task


def test_the_cli_cleans_a_folder_and_writes_parquet(tmp_path):
    rows, evals = corpus()
    shards = write_shards(tmp_path / "in", rows[:400])
    (tmp_path / "evals.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in evals))
    (tmp_path / "clean.yaml").write_text(
        json.dumps({"clean": OPTIONS, "executor": {"output_format": "parquet", "tasks": 2}})
    )
    command = ["data", "clean", str(tmp_path / "in"), str(tmp_path / "out"), "--config", str(tmp_path / "clean.yaml")]
    result = CliRunner().invoke(app, [*command, "--against", str(tmp_path / "evals.jsonl"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    records = [item.data for name in shards for item in read_rows(tmp_path / "in" / name)]
    evals_by_where = {item.where: item.data["question"] for item in read_rows(tmp_path / "evals.jsonl")}
    expected = clean_records(records, CleanConfig.model_validate(OPTIONS), eval_texts=evals_by_where)
    assert read_output(tmp_path / "out", shards, "parquet") == expected.records
    assert f"wrote {len(expected.records)} of {len(records)} rows" in result.output

    again = CliRunner().invoke(app, [*command, "--workers", "2"])  # without --against: another run
    assert again.exit_code == 2 and "holds another cleaning run" in again.output


def test_a_bad_row_stops_the_run_naming_its_line_and_no_report_is_written(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "one good row of text"}) + "\n")
    (folder / "b.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    result = CliRunner().invoke(app, ["data", "clean", str(folder), str(tmp_path / "out")])
    assert result.exit_code != 0
    assert not (tmp_path / "out" / "clean_report.json").exists()
    with pytest.raises(DataError, match=r"b\.jsonl:2"):
        clean_shards(folder, tmp_path / "direct", CleanConfig())


def test_refusals_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data files"):
        clean_shards(tmp_path / "empty", tmp_path / "out", CleanConfig())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(json.dumps({"text": "a row"}) + "\n")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        clean_shards(tmp_path / "in", tmp_path / "busy", CleanConfig())
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="partition, time required"):
        clean_shards(tmp_path / "in", tmp_path / "out2", CleanConfig(), ShardedRunConfig(executor="slurm"))
    result = CliRunner().invoke(
        app, ["data", "clean", str(tmp_path / "in" / "a.jsonl"), str(tmp_path / "o.jsonl"), "--workers", "2"]
    )
    assert result.exit_code == 2 and "apply to a folder of shards" in result.output


def test_the_ray_executor_runs_the_same_pipeline_on_a_local_ray(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ray.init() leaves ~/.ray/auth_token behind
    rows, evals = corpus()
    shards = write_shards(tmp_path / "in", rows[:300])
    records, expected, eval_texts = in_process(tmp_path / "in", shards, evals)
    environment = dict(os.environ)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = clean_shards(
            tmp_path / "in", tmp_path / "out", CleanConfig.model_validate(OPTIONS),
            ShardedRunConfig(executor="ray", tasks=2, ray={"cpus_per_task": 1}), eval_texts,
        )  # fmt: skip
    finally:
        ray.shutdown()
        os.environ.clear()  # ray.init() sets RAY_* variables that later Ray clusters of the suite would inherit
        os.environ.update(environment)
    assert read_output(tmp_path / "out", shards) == expected.records
    assert comparable(report.to_dict()) == comparable(expected.report.to_dict())


FAKE_SBATCH = r'''#!PYTHON
"""A stand-in for Slurm's sbatch: runs every array task of the script at once, in order, and logs the call."""
import os, re, subprocess, sys
from pathlib import Path

log = Path(os.environ["FAKE_SLURM_LOG"])
calls = log.read_text().splitlines() if log.exists() else []
job = 100 + len(calls)
script = Path(sys.argv[-1]).read_text()
args = sys.argv[1:-1]
array = re.search(r"^#SBATCH --array=0-(\d+)", script, re.M)
offset = next((a.split("RUN_OFFSET=")[1] for a in args if "RUN_OFFSET=" in a), "0")
dependency = re.search(r"^#SBATCH --dependency=(\S+)", script, re.M)
deps = [a.split("=", 1)[1] for a in args if a.startswith("--dependency=")]
deps += [dependency.group(1)] if dependency else []
name = re.search(r"^#SBATCH --job-name=(\S+)", script, re.M).group(1) + ("/stats" if "merge_stats" in script else "")
log.write_text("\n".join(calls + [f"{job} {name} {','.join(deps)}"]) + "\n")
for index in range(int(array.group(1)) + 1 if array else 1):
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(index), "RUN_OFFSET": offset, "SLURM_NODELIST": "localhost",
           "SLURM_JOB_ID": str(job)}
    subprocess.run(["bash", "-c", script], env=env, check=True)
print(f"Submitted batch job {job}")
'''
FAKE_SRUN = r'''#!PYTHON
"""A stand-in for srun: runs the command after its options on this machine."""
import os, sys
args, rest = sys.argv[1:], []
while args and args[0].startswith("-"):
    option = args.pop(0)
    if option == "-n":
        args.pop(0)
os.execvp(args[0], args)
'''
FAKE_SCONTROL = r'''#!PYTHON
"""A stand-in for `scontrol show hostnames NODELIST`: this machine."""
print("localhost")
'''


def test_the_slurm_executor_submits_four_dependent_jobs_that_clean_like_in_process(tmp_path, monkeypatch):
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, source in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(source.replace("PYTHON", sys.executable, 1))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "sbatch.log"))
    rows, evals = corpus()
    shards = write_shards(tmp_path / "in", rows[:300])
    records, expected, eval_texts = in_process(tmp_path / "in", shards, evals)
    run = ShardedRunConfig(executor="slurm", tasks=2, slurm={"partition": "cpu", "time": "00:30:00"})
    assert clean_shards(tmp_path / "in", tmp_path / "out", CleanConfig.model_validate(OPTIONS), run, eval_texts) is None
    submitted = [line.split(" ") for line in (tmp_path / "sbatch.log").read_text().splitlines()]
    stages = [(job, name, deps) for job, name, *deps in submitted if not name.endswith("/stats")]
    jobs = {name: (job, "".join(deps)) for job, name, deps in stages}
    assert list(jobs) == [f"llmft-clean-{stage}" for stage in ("features", "decide", "write", "report")]
    for earlier, later in (("features", "decide"), ("decide", "write"), ("write", "report")):
        assert f"afterok:{jobs['llmft-clean-' + earlier][0]}" in jobs["llmft-clean-" + later][1]
    assert read_output(tmp_path / "out", shards) == expected.records
    written = json.loads((tmp_path / "out" / "clean_report.json").read_text())
    assert comparable(written) == comparable(expected.report.to_dict())
