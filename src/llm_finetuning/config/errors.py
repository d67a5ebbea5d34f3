"""Turn pydantic's validation errors into messages that name the key, where it was set, and the fix."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from llm_finetuning.config.schema import Config

KeyPath = tuple[str | int, ...]


def model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, lists, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return model_classes(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict) or origin is not None:
        for arg in typing.get_args(annotation):
            found.extend(c for c in model_classes(arg) if c not in found)
    return found


def _tag_field(cls: type[BaseModel]) -> tuple[str, str] | None:
    """The discriminator key and value of a union member (`name: sft`, `method: lora`), if it has one."""
    for name in ("name", "method"):
        field = cls.model_fields.get(name)
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            args = typing.get_args(field.annotation)
            if len(args) == 1:
                return name, str(args[0])
    return None


def _tag(cls: type[BaseModel]) -> str | None:
    found = _tag_field(cls)
    return found[1] if found else None


def _walk(
    loc: tuple[Any, ...], root: type[BaseModel] = Config
) -> tuple[KeyPath, list[type[BaseModel]], list[type[BaseModel]]]:
    """Map pydantic's error location onto the user's key path.

    Returns the user path (tags of tagged unions removed), the model owning the last key, and the other
    members of the union that model came from (to say "this key belongs to method X").
    """
    classes: list[type[BaseModel]] = [root]
    owner: list[type[BaseModel]] = [root]
    siblings: list[type[BaseModel]] = []
    path: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            path.append(part)
            continue
        if classes and part not in classes[0].model_fields:
            chosen = [c for c in classes if _tag(c) == part]
            if chosen:
                siblings = [c for c in classes if c is not chosen[0]]
                classes = chosen
                continue
        path.append(part)
        owner = classes
        fields = classes[0].model_fields if classes else {}
        classes = model_classes(fields[part].annotation) if part in fields else []
        if len(classes) <= 1:
            siblings = siblings if part not in fields else []
    return tuple(path), owner, siblings


def _where(path: KeyPath, locations: dict[KeyPath, str]) -> str:
    for cut in range(len(path), -1, -1):
        if path[:cut] in locations:
            return locations[path[:cut]]
    return "config"


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _unknown_key(path: KeyPath, owner: list[type[BaseModel]], siblings: list[type[BaseModel]]) -> str:
    key = str(path[-1])
    valid = list(owner[0].model_fields) if owner else []
    for other in siblings:
        tag = _tag_field(other)
        if key in other.model_fields and tag:
            section = _dotted(path[:-1])
            here = _tag(owner[0]) if owner else "?"
            return (
                f"unknown key: `{key}` is an option of `{section}.{tag[0]}: {tag[1]}`, not of `{here}`. "
                f"Remove it or set `{section}.{tag[0]}: {tag[1]}`."
            )
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"unknown key. Did you mean `{close[0]}`?"
    return f"unknown key. Valid keys here: {', '.join(valid)}."


def _describe(
    error: dict[str, Any], path: KeyPath, owner: list[type[BaseModel]], siblings: list[type[BaseModel]]
) -> str:
    kind = error["type"]
    msg: str = error["msg"]
    if kind == "extra_forbidden":
        return _unknown_key(path, owner, siblings)
    if kind == "missing":
        return "required key is missing."
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        got = str(ctx.get("tag", ""))
        close = difflib.get_close_matches(got, tags, n=1, cutoff=0.5)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        return f"unknown value `{got}`; choose one of: {', '.join(tags)}.{hint}"
    if kind == "union_tag_not_found":
        return "required key is missing; it chooses the variant."
    if kind == "value_error":
        return msg.removeprefix("Value error, ").rstrip(".") + "."
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict | list) or len(repr(got)) < 60 else type(got).__name__
    return f"{msg[0].lower()}{msg[1:]} (got {shown})."


def _first_key_named(message: str, locations: dict[KeyPath, str]) -> KeyPath:
    """A whole-config check (two sections in conflict) is located at the first key its message names."""
    keys = [tuple(m.split(".")) for m in re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)", message)]
    for key in keys:
        if key in locations:
            return key
    return keys[0] if keys else ()


def _problems(
    exc: ValidationError, locations: dict[KeyPath, str], root: type[BaseModel] = Config
) -> list[tuple[KeyPath, str]]:
    problems = []
    for error in exc.errors():
        path, owner, siblings = _walk(tuple(error["loc"]), root)
        if not path and error["type"] == "value_error":
            path = _first_key_named(error["msg"], locations)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, str(error.get("ctx", {}).get("discriminator", "")).strip("'"))
        problems.append((path, _describe(error, path, owner, siblings)))
    return problems


def validation_problems(exc: ValidationError, locations: dict[KeyPath, str] | None = None) -> list[tuple[str, str]]:
    """(dotted key, what is wrong and what to do) per problem, duplicates dropped: what the UI shows at each
    field, and what `format_validation_error` prints with the file and line."""
    return list(dict.fromkeys((_dotted(path), message) for path, message in _problems(exc, locations or {})))


def format_validation_error(exc: ValidationError, locations: dict[KeyPath, str], root: type[BaseModel] = Config) -> str:
    """One line per problem: `file:line: key.path: what is wrong and what to do`. `root` is the schema that was
    validated (the training config unless told)."""
    problems = _problems(exc, locations, root)
    lines = [f"{_where(path, locations)}: {_dotted(path)}: {message}" for path, message in problems]
    count = len(lines)
    head = f"Invalid config ({count} problem{'s' if count > 1 else ''}):"
    return "\n".join([head, *("  " + line for line in dict.fromkeys(lines))])
