"""Read a YAML config with `extends:` and command-line overrides, remembering where every key came from."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llm_finetuning.config.errors import format_validation_error
from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError

KeyPath = tuple[str | int, ...]
Locations = dict[KeyPath, str]


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, merge and validate a config file (or a shipped recipe, by name); raise `ConfigError` naming the key,
    file and line."""
    path = resolve_config_path(path)
    data, locations = load_raw(path)
    for item in overrides or []:
        apply_override(data, locations, item)
    data.setdefault("output_dir", str(Path("runs") / Path(path).stem))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, locations)) from None


def resolve_config_path(path: str | Path) -> Path:
    """`path` when it is a file, else the shipped recipe of that name (`supervised_finetuning/lora/arc`)."""
    if Path(path).exists():
        return Path(path)
    from llm_finetuning.recipes.catalog import find_recipe, not_found_message

    recipe = find_recipe(str(path))
    if recipe is None:
        raise ConfigError(not_found_message(str(path), as_file=True))
    return recipe.path


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Locations]:
    """The merged mapping of a file and its `extends:` parents, and the file:line of every key."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"`extends` forms a cycle: {cycle}")
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    data, locations = _read_yaml(path)
    return _with_parents(data, locations, path.parent, (*_chain, path))


def load_raw_mapping(
    data: dict[str, Any], base: Path, locations: Locations | None = None
) -> tuple[dict[str, Any], Locations]:
    """`load_raw` for a config written inline in another file (a stage of a stages file): paths and `extends`
    are relative to `base`, the folder of the file that holds it."""
    return _with_parents(copy.deepcopy(data), dict(locations or {}), base.resolve(), ())


def _with_parents(
    data: dict[str, Any], locations: Locations, base: Path, chain: tuple[Path, ...]
) -> tuple[dict[str, Any], Locations]:
    _resolve_relative_paths(data, base)
    parents = data.pop("extends", None)
    if parents is None:
        return data, locations
    where = locations.pop(("extends",), str(base))
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{where}: `extends` must be a path or a list of paths, relative to this file")
    merged: dict[str, Any] = {}
    merged_locations: Locations = {}
    for parent in parents:
        parent_path = (base / parent).resolve()
        if not parent_path.is_file():
            raise ConfigError(f"{where}: `extends: {parent}` not found (looked for {parent_path})")
        parent_data, parent_locations = load_raw(parent_path, chain)
        _deep_merge(merged, merged_locations, parent_data, parent_locations)
    _deep_merge(merged, merged_locations, data, locations)
    return merged, merged_locations


def apply_override(data: dict[str, Any], locations: Locations, item: str) -> None:
    """Apply one `dotted.key=value` override; the value is parsed as YAML (`1e-4`, `true`, `[a, b]`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"Override `{item}` is not of the form `section.key=value`")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    parts = _drop_single_item_index(data, parts)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        nxt = node[part] if _has(node, part) else None
        if not isinstance(nxt, dict | list):
            if isinstance(part, int):
                raise ConfigError(f"Override `{item}`: `{'.'.join(map(str, parts[: depth + 1]))}` does not exist")
            nxt = {}
            node[part] = nxt
        node = nxt
    last = parts[-1]
    if isinstance(node, list) and not (isinstance(last, int) and last < len(node)):
        raise ConfigError(f"Override `{item}`: index {last} is out of range")
    node[last] = value
    path = tuple(parts)
    for known in [k for k in locations if k[: len(path)] == path]:
        del locations[known]
    locations[path] = f"command line `{item}`"


def _drop_single_item_index(data: dict[str, Any], parts: list[str | int]) -> list[str | int]:
    """`data.train.0.path` also addresses `data.train` written as one mapping instead of a list of one."""
    node: Any = data
    out: list[str | int] = []
    for part in parts:
        if part == 0 and isinstance(node, dict) and 0 not in node:
            continue
        out.append(part)
        node = node[part] if node is not None and _has(node, part) else None
    return out


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and part < len(node)


def _read_yaml(path: Path) -> tuple[dict[str, Any], Locations]:
    text = path.read_text(encoding="utf-8")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping of sections")
    locations: Locations = {}
    if node is not None:
        _collect_locations(node, (), path, locations)
    return data, locations


def _collect_locations(node: yaml.Node, prefix: KeyPath, path: Path, out: Locations) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            where = f"{path}:{key_node.start_mark.line + 1}"
            if key in seen:
                dotted = ".".join(str(p) for p in (*prefix, key))
                raise ConfigError(f"{where}: `{dotted}` is set twice in the same mapping; keep one")
            seen.add(key)
            out[(*prefix, key)] = where
            _collect_locations(value_node, (*prefix, key), path, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*prefix, index)] = f"{path}:{item.start_mark.line + 1}"
            _collect_locations(item, (*prefix, index), path, out)


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Make file paths written in a YAML file relative to that file, so configs can move with their data."""
    section = data.get("data")
    if isinstance(section, dict):
        for split in ("train", "eval", "clean_against"):
            sources = section.get(split)
            for source in sources if isinstance(sources, list) else [sources]:
                if isinstance(source, dict) and isinstance(source.get("path"), str):
                    source["path"] = _relative_to(source["path"], base)
    model = data.get("model")
    if isinstance(model, dict):
        for key in ("name", "tokenizer"):
            value = model.get(key)
            if isinstance(value, str) and value.startswith(("./", "../")):
                model[key] = _relative_to(value, base)
    evaluation = data.get("eval")
    if isinstance(evaluation, dict):
        tasks = evaluation.get("tasks")
        for task in tasks if isinstance(tasks, list) else [tasks]:
            if isinstance(task, dict) and isinstance(task.get("path"), str):
                task["path"] = _relative_to(task["path"], base)
        golden = evaluation.get("golden")
        if isinstance(golden, dict) and isinstance(golden.get("path"), str):
            if not golden["path"].startswith("builtin:"):  # a set kept in the package, not a file
                golden["path"] = _relative_to(golden["path"], base)
        if isinstance(golden, dict) and isinstance(golden.get("baseline"), str):
            if golden["baseline"].startswith(("./", "../")):  # else a hub id, like model.name
                golden["baseline"] = _relative_to(golden["baseline"], base)


def _relative_to(value: str, base: Path) -> str:
    expanded = Path(value).expanduser()
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def _deep_merge(dst: dict[str, Any], dst_loc: Locations, src: dict[str, Any], src_loc: Locations) -> None:
    """Merge `src` over `dst`: mappings merge key by key, anything else (lists too) is replaced."""

    def merge(d: dict[str, Any], s: dict[str, Any], prefix: KeyPath) -> None:
        for key, value in s.items():
            path = (*prefix, key)
            if isinstance(value, dict) and isinstance(d.get(key), dict):
                if path in src_loc:
                    dst_loc[path] = src_loc[path]
                merge(d[key], value, path)
                continue
            d[key] = copy.deepcopy(value)
            for known in [k for k in dst_loc if k[: len(path)] == path]:
                del dst_loc[known]
            dst_loc.update({k: v for k, v in src_loc.items() if k[: len(path)] == path})

    merge(dst, src, ())
