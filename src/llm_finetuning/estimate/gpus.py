"""The editable table of GPUs (`gpus.yaml` next to this module, or the user's own with `--gpu-table`)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llm_finetuning.errors import UserError

DEFAULT_TABLE = Path(__file__).with_name("gpus.yaml")
FIELDS = ("memory_gib", "tflops", "bandwidth_tbs", "usd_per_hour")


@dataclass(frozen=True)
class GPU:
    """One row of the table."""

    name: str
    memory_gib: float
    tflops: float
    """Dense 16-bit tensor TFLOP/s."""
    bandwidth_tbs: float
    usd_per_hour: float
    bf16: bool = True
    aliases: tuple[str, ...] = field(default=())

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def load_table(path: str | Path | None = None) -> list[GPU]:
    """Read a GPU table; every row needs a name and the numeric fields, named in the error when missing."""
    path = Path(path) if path is not None else DEFAULT_TABLE
    if not path.is_file():
        raise UserError(f"--gpu-table: {path} not found.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"--gpu-table: {path} is not valid YAML ({exc}).") from None
    rows = data.get("gpus") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UserError(f"--gpu-table: {path} needs a non-empty `gpus:` list (see {DEFAULT_TABLE} for the layout).")
    table = []
    for index, row in enumerate(rows):
        where = f"{path}: gpus[{index}]"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise UserError(f"{where} needs a `name`.")
        values = {}
        for key in FIELDS:
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserError(f"{where} ({row['name']}): `{key}` must be a positive number.")
            values[key] = float(value)
        unknown = set(row) - {"name", "aliases", "bf16", *FIELDS}
        if unknown:
            raise UserError(f"{where} ({row['name']}): unknown key `{sorted(unknown)[0]}`.")
        aliases = tuple(str(a) for a in row.get("aliases") or ())
        table.append(GPU(name=row["name"], bf16=bool(row.get("bf16", True)), aliases=aliases, **values))
    return table


def find_gpu(name: str, table: list[GPU]) -> GPU:
    """The table row called `name` (or one of its aliases); an unknown name suggests the closest ones."""
    wanted = _key(name)
    for gpu in table:
        if wanted in {_key(gpu.name), *(_key(a) for a in gpu.aliases)}:
            return gpu
    names = [g.name for g in table]
    by_key = {_key(alias): g.name for g in table for alias in (g.name, *g.aliases)}
    close = list(dict.fromkeys(name for key, name in by_key.items() if key.startswith(wanted)))[:2]
    if not close:  # a typo rather than a shortened name
        close = list(dict.fromkeys(by_key[k] for k in difflib.get_close_matches(wanted, list(by_key), n=3, cutoff=0.5)))
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UserError(
        f"--gpu: unknown GPU `{name}`.{hint} Known: {', '.join(names)}. Add it to the table (--gpu-table FILE)."
    )
