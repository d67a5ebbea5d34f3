"""The schema as rows of (key, type, default, description), for `llmft config schema`, `--help` and docs."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llm_finetuning.config.errors import model_classes
from llm_finetuning.config.schema import Config


@dataclass(frozen=True)
class KeyInfo:
    key: str
    type: str
    default: str
    description: str
    variant: str = ""  # for options of one member of a tagged union: e.g. `adapter.method: lora`
    annotation: Any = None
    """The field's type as pydantic holds it: what the UI builds its input from."""
    default_value: Any = None
    """The default itself (`REQUIRED` when there is none)."""


REQUIRED = object()


def _default_value(field: Any) -> Any:
    if field.default is PydanticUndefined and field.default_factory is None:
        return REQUIRED
    return field.get_default(call_default_factory=True)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, __import__("types").UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    return "null" if value is None else str(value)


def describe(model: type[BaseModel] = Config, prefix: str = "", variant: str = "") -> list[KeyInfo]:
    """Every key of the schema, depth first, with its description."""
    rows: list[KeyInfo] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = model_classes(field.annotation)
        rows.append(
            KeyInfo(
                key,
                _type_name(field.annotation),
                _default(field),
                field.description or "",
                variant,
                field.annotation,
                _default_value(field),
            )
        )
        if len(nested) == 1 and typing.get_origin(field.annotation) is not list:
            rows.extend(describe(nested[0], f"{key}.", variant))
        elif len(nested) == 1:
            rows.extend(describe(nested[0], f"{key}[].", variant))
        else:
            rows.extend(_union_rows(nested, key))
    return rows


def _union_rows(members: list[type[BaseModel]], key: str) -> list[KeyInfo]:
    """Options of a tagged union's members; an option shared unchanged by several is listed once."""
    merged: dict[tuple[str, str, str, str], list[str]] = {}
    tag_name = ""
    for member in members:
        tag_name = next((f for f in ("name", "method") if f in member.model_fields), "")
        tag = str(member.model_fields[tag_name].default) if tag_name else member.__name__
        for row in describe(member, f"{key}."):
            if not row.key.endswith(f".{tag_name}"):
                merged.setdefault((row.key, row.type, row.default, row.description), []).append((tag, row))
    return [
        KeyInfo(k, t, d, text, f"{key}.{tag_name}: {' | '.join(tag for tag, _ in found)}", *_typed(found[0][1]))
        for (k, t, d, text), found in merged.items()
    ]


def _typed(row: KeyInfo) -> tuple[Any, Any]:
    return row.annotation, row.default_value
