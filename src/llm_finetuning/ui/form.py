"""The new-run form, generated from the config schema: fields, the config a filled form stands for, its problems.

Every field comes from `config.describe` (the rows of `llmft config schema`), so a key added to the schema appears
in the form with its description, type and choices, and no UI code changes. The form holds one training source
and one evaluation source (`data.train[0]`, `data.eval[0]`); anything beyond is written in the YAML.

Nothing here imports the UI framework: `app.py` turns `Field`s into widgets, and the tests drive these functions
directly.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llm_finetuning.config.describe import REQUIRED, KeyInfo, describe
from llm_finetuning.config.errors import _tag_field, model_classes, validation_problems
from llm_finetuning.config.schema import SECTION_TAGS, Config, with_default_tag

ITEM_FIELDS = ("data.train", "data.eval")
"""Lists whose first entry gets a field per key; any other list of entries is one YAML field."""


@dataclass(frozen=True)
class Field:
    """One input of the form."""

    key: str
    """Dotted key, list items by index: `data.train[0].path`."""
    kind: str
    """bool, choice, int, float, text (a string) or yaml (lists, mappings, mixed types: written as YAML)."""
    description: str
    default: Any
    """What the schema fills in when the field is left alone (`None`: nothing, or required)."""
    choices: tuple[Any, ...] = ()
    """A choice field's values as the schema has them (strings, or numbers such as `zero_stage: 2`)."""
    nullable: bool = False
    when: tuple[str, tuple[str, ...]] | None = None
    """(tag field, tags): the field belongs to these variants of a tagged union, e.g. ("adapter.method", ("lora",
    "dora")); it is shown, and sent, only while that tag field holds one of them."""
    is_tag: bool = False
    """This field picks a variant (`adapter.method`, `method.name`)."""

    @property
    def id(self) -> str:
        """Unique per field: a key that several variants share (`adapter.target_modules` of lora and of ia3, each
        with its own default) is one field per variant."""
        return self.key if self.when is None else f"{self.key}@{'|'.join(self.when[1])}"

    @property
    def section(self) -> str:
        return self.key.split(".")[0].split("[")[0]


def _plain(annotation: Any) -> tuple[Any, bool]:
    """The annotation without Optional/Annotated, and whether None is allowed."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _plain(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            inner, inner_null = _plain(args[0])
            return inner, nullable or inner_null
        return typing.Union[tuple(args)], nullable  # noqa: UP007 (rebuilt from a runtime tuple)
    return annotation, False


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    if typing.get_origin(annotation) is typing.Literal:
        return "choice", tuple(typing.get_args(annotation))
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return "text", ()
    return "yaml", ()


def _form_key(key: str) -> str:
    return key.replace("[]", "[0]")


def _variant(row: KeyInfo) -> tuple[str, tuple[str, ...]] | None:
    if not row.variant:
        return None
    tag_key, _, tags = row.variant.partition(": ")
    return _form_key(tag_key), tuple(t.strip() for t in tags.split("|"))


def _tag_choices(row: KeyInfo) -> Field | None:
    """The field that picks a tagged union's variant (`adapter.method`, `method.name`)."""
    members = model_classes(row.annotation)
    tags = [_tag_field(m) for m in members]
    if len(members) < 2 or not all(tags):
        return None
    name = tags[0][0]
    default = row.default_value
    chosen = _tag_field(type(default))[1] if isinstance(default, BaseModel) and _tag_field(type(default)) else None
    return Field(
        key=f"{_form_key(row.key)}.{name}",
        kind="choice",
        description=row.description,
        default=chosen,
        choices=tuple(t[1] for t in tags),  # type: ignore[index]
        when=_variant(row),
        is_tag=True,
    )


def fields() -> list[Field]:
    """The form's fields, in schema order."""
    out: list[Field] = []
    rows = describe()
    as_yaml: list[str] = []
    for row in rows:
        if any(row.key.startswith(f"{prefix}[].") for prefix in as_yaml):
            continue
        plain, nullable = _plain(row.annotation)
        nested = model_classes(plain)
        if nested and typing.get_origin(plain) is list and row.key not in ITEM_FIELDS:
            as_yaml.append(row.key)  # a list of entries (rewards, eval tasks): one YAML field for all of them
            default = None if row.default_value is REQUIRED else row.default_value
            dumped = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default or []]
            out.append(Field(_form_key(row.key), "yaml", row.description, dumped, when=_variant(row)))
            continue
        if nested and len(nested) == 1:
            continue  # a section: its keys follow as their own rows
        if len(nested) > 1:
            tag = _tag_choices(row)
            if tag is not None:
                out.append(tag)
            continue
        kind, choices = _kind(plain)
        default = None if row.default_value is REQUIRED else row.default_value
        out.append(
            Field(
                key=_form_key(row.key),
                kind=kind,
                description=row.description,
                default=default,
                choices=choices,
                nullable=nullable,
                when=_variant(row),
            )
        )
    return out


# -------------------------------------------------------------------------------------------- values -> config
class FormError(ValueError):
    """A field value that is not even of its type (YAML that does not parse, a number that is not one)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _value(field: Field, raw: Any) -> Any:
    """The typed value of one input, or `_UNSET` when the field is left to the schema."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return _UNSET
    if field.kind == "bool":
        value: Any = bool(raw)
    elif field.kind == "choice":
        value = next((c for c in field.choices if str(c) == str(raw)), None)
        if value is None:
            raise FormError(field.key, f"{raw!r} is not one of {', '.join(map(str, field.choices))}")
    elif field.kind == "int":
        try:
            value = int(raw) if float(raw) == int(float(raw)) else float(raw)
        except (TypeError, ValueError):
            raise FormError(field.key, f"expected a whole number, got {raw!r}") from None
    elif field.kind == "float":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise FormError(field.key, f"expected a number, got {raw!r}") from None
    elif field.kind == "yaml":
        try:
            value = yaml.safe_load(raw) if isinstance(raw, str) else raw
        except yaml.YAMLError as exc:
            raise FormError(field.key, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        value = str(raw)
    return _UNSET if value == field.default else value


_UNSET = object()


def active(field: Field, values: dict[str, Any], by_key: dict[str, Field]) -> bool:
    """A field of a variant counts (is shown, is sent) only while its tag field holds that variant, and that tag
    field is active itself. `by_key`: `tag_fields(form)`."""
    if field.when is None:
        return True
    tag_key, tags = field.when
    tag_field = by_key.get(tag_key)
    current = values.get(tag_field.id if tag_field is not None else tag_key)
    if current in (None, "") and tag_field is not None:
        current = tag_field.default
    return str(current) in tags and (tag_field is None or active(tag_field, values, by_key))


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node: Any = data
    parts: list[str | int] = []
    for part in key.split("."):
        name, _, index = part.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index.rstrip("]")))
    for part, following in zip(parts, parts[1:], strict=False):
        if isinstance(part, int):
            while len(node) <= part:
                node.append({})
            node = node[part]
        else:
            node = node.setdefault(part, [] if isinstance(following, int) else {})
    node[parts[-1]] = value


def config_data(values: dict[str, Any], form: list[Field] | None = None) -> dict[str, Any]:
    """The config a filled form stands for: only what differs from the schema's defaults, plus tag fields (a
    variant's options need their tag), in schema order. Raises `FormError` for a value that is not of its type."""
    form = form or fields()
    by_key = tag_fields(form)
    data: dict[str, Any] = {}
    for field in form:
        if field.id not in values or not active(field, values, by_key):
            continue
        value = _value(field, values[field.id])
        if value is _UNSET:
            if field.is_tag and _has_variant_values(field, values, form, by_key):
                value = values[field.id] or field.default
            else:
                continue
        _set(data, field.key, value)
    return data


def _has_variant_values(tag: Field, values: dict[str, Any], form: list[Field], by_key: dict[str, Field]) -> bool:
    """Whether any option of the chosen variant is set: then its tag is written too (pydantic needs it)."""
    for field in form:
        if field.when and field.when[0] == tag.key and active(field, values, by_key):
            if field.id in values and _value(field, values[field.id]) is not _UNSET:
                return True
    return False


def tag_fields(form: list[Field]) -> dict[str, Field]:
    """The fields that pick variants, by key (a tag key is never shared, so key is unique among them)."""
    return {f.key: f for f in form if f.is_tag}


def defaults(form: list[Field]) -> dict[str, Any]:
    """Form values (by field id) of a blank form."""
    return {f.id: f.default for f in form}


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if data else ""


# -------------------------------------------------------------------------------------------- problems
def problems(values: dict[str, Any], form: list[Field] | None = None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The config data and its problems as (form key, message), checked by the schema `llmft train` uses."""
    try:
        data = config_data(values, form)
    except FormError as exc:
        return {}, [(exc.key, exc.message)]
    return data, check(data)


def check(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(form key, message) per problem of a config as a dict; [] when `llmft train` would accept it."""
    try:
        Config.model_validate({"output_dir": "runs/run", **data})
    except ValidationError as exc:
        return [(_to_form_key(key), message) for key, message in validation_problems(exc)]
    return []


def _to_form_key(dotted: str) -> str:
    """`data.train.0.path` (pydantic's path) -> `data.train[0].path` (the form's key)."""
    parts = dotted.split(".")
    out: list[str] = []
    for part in parts:
        if part.isdigit() and out:
            out[-1] += f"[{part}]"
        else:
            out.append(part)
    return ".".join(out)


def values_from_config(data: dict[str, Any], form: list[Field] | None = None) -> dict[str, Any]:
    """Form values (by field id) for a config (a recipe, a YAML file): each field's value where the config sets it;
    a key shared by several variants is set on each (only the chosen variant's counts)."""
    form = form or fields()
    data = {key: with_default_tag(key, value) if key in SECTION_TAGS else value for key, value in data.items()}
    out: dict[str, Any] = {}
    for field in form:
        node: Any = data
        found = True
        for part in field.key.split("."):
            name, _, index = part.partition("[")
            if not isinstance(node, dict) or name not in node:
                found = False
                break
            node = node[name]
            if index:
                position = int(index.rstrip("]"))
                if isinstance(node, dict) and position == 0:  # `train: {path: ...}`, one source without a list
                    node = [node]
                if not isinstance(node, list) or len(node) <= position:
                    found = False
                    break
                node = node[position]
        if found:
            out[field.id] = yaml_text(node) if field.kind == "yaml" else node
    return out


def field_for(key: str, form: list[Field]) -> Field | None:
    """The field a problem at `key` is shown at: the field itself, else the first field of the section it names
    (`data` missing -> the first field of `data`)."""
    for field in form:
        if field.key == key:
            return field
    for field in form:
        if field.key.startswith((f"{key}.", f"{key}[")):
            return field
    return None


def yaml_text(value: Any) -> str:
    """A value as the one-line YAML a field shows (`[q_proj, v_proj]`, `all-linear`), without YAML's `...`."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
