"""A renderer for the subset of Go's `text/template` that Ollama chat templates use.

Ollama renders prompts with Go templates; this module renders the same templates in Python with Go's
semantics, so a template written for Ollama can be checked against the Jinja chat template a model was
trained with (`export.ollama_template` and the pre-flight check do this). Supported: text and actions with
trim markers (`{{-` / `-}}` remove all adjacent spaces, tabs and newlines), comments, fields (`.A.B`, `$.A`,
`$x.A`), variables (`$x := ...`, `$x = ...`), string/raw-string/number/bool literals, parenthesised pipelines,
`|` pipes, `if` / `else if` / `else`, `range` over lists with one or two variables (and its `else`), and the
functions `and`, `or`, `not`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `len`, `slice` and `index`. Anything else is a
`GoTemplateError`, never a silent difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_finetuning.export.go_template_parse import GoTemplateError, IfNode, Pipeline, RangeNode, go_quote, parse

__all__ = ["GoTemplateError", "Message", "go_quote", "parse", "render", "truth"]


@dataclass(frozen=True)
class Message:
    """One chat message as Ollama passes it to a template (`.Role`, `.Content`): a struct, not a map."""

    Role: str
    Content: str


def truth(value: Any) -> bool:
    """Go's notion of a true value: not false, 0, nil, or an empty string, list or map."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    raise GoTemplateError(f"invalid type for comparison: {type(value).__name__}")


def _compare(a: Any, b: Any) -> None:
    if _kind(a) != _kind(b):
        raise GoTemplateError(f"incompatible types for comparison: {_kind(a)} and {_kind(b)}")


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise GoTemplateError("eq: missing argument for comparison")
    for other in others:
        if first is None or other is None:  # Go: a nil never equals a value, and is no error
            if first is None and other is None:
                return True
            continue
        _compare(first, other)
        if first == other:
            return True
    return False


def _ordered(name: str, a: Any, b: Any) -> bool:
    _compare(a, b)
    if _kind(a) == "bool":
        raise GoTemplateError(f"{name}: invalid type for comparison")
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[name]


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go strings are byte sequences
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise GoTemplateError(f"len of {type(value).__name__}")


def _slice(value: Any, *indices: Any) -> Any:
    if not isinstance(value, (list, tuple, str)) or len(indices) > 2:
        raise GoTemplateError("slice: unsupported arguments")
    if any(not isinstance(i, int) or isinstance(i, bool) for i in indices):
        raise GoTemplateError("slice: indices must be integers")
    sequence = value.encode() if isinstance(value, str) else value
    low = indices[0] if indices else 0
    high = indices[1] if len(indices) > 1 else len(sequence)
    if not 0 <= low <= high <= len(sequence):
        raise GoTemplateError(f"slice: index out of range [{low}:{high}] with length {len(sequence)}")
    part = sequence[low:high]
    return part.decode("utf-8", errors="replace") if isinstance(part, bytes) else part


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, (list, tuple, str)):
            sequence = value.encode() if isinstance(value, str) else value
            if not isinstance(key, int) or not 0 <= key < len(sequence):
                raise GoTemplateError(f"index out of range: {key}")
            value = sequence[key]
        else:
            raise GoTemplateError(f"can't index item of type {type(value).__name__}")
    return value


_FUNCTIONS = {
    "not": lambda value: not truth(value),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": lambda a, b: _ordered("lt", a, b),
    "le": lambda a, b: _ordered("le", a, b),
    "gt": lambda a, b: _ordered("gt", a, b),
    "ge": lambda a, b: _ordered("ge", a, b),
    "len": _len,
    "slice": _slice,
    "index": _index,
}


def _text(value: Any) -> str:
    """How Go prints a value in an action."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float) and value == int(value) and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    raise GoTemplateError(f"printing a {type(value).__name__} is outside the supported subset")


class _State:
    def __init__(self, data: Any) -> None:
        self.variables: list[tuple[str, Any]] = [("$", data)]
        self.out: list[str] = []

    def lookup(self, name: str) -> Any:
        for variable, value in reversed(self.variables):
            if variable == name:
                return value
        raise GoTemplateError(f"undefined variable: {name}")

    def assign(self, name: str, value: Any) -> None:
        for position in range(len(self.variables) - 1, -1, -1):
            if self.variables[position][0] == name:
                self.variables[position] = (name, value)
                return
        raise GoTemplateError(f"undefined variable: {name}")

    def field(self, value: Any, names: tuple[str, ...]) -> Any:
        for name in names:
            if isinstance(value, dict):
                value = value.get(name)  # Ollama parses with missingkey=zero: a missing map key is nil
            elif value is None:
                raise GoTemplateError(f"nil pointer evaluating .{name}")
            elif hasattr(value, name) and not name.startswith("_"):
                value = getattr(value, name)
            else:
                raise GoTemplateError(f"can't evaluate field {name} in type {type(value).__name__}")
        return value

    def operand(self, node: Any, dot: Any) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "dot":
            return dot
        if kind == "nil":
            return None
        if kind == "var":
            return self.lookup(node[1])
        if kind == "field":
            return self.field(self.operand(node[1], dot), node[2])
        if kind == "pipe":
            return self.pipeline(node[1], dot)
        raise GoTemplateError(f"{node[1]} is not a value (call it with arguments)")

    def command(self, operands: list[Any], dot: Any, piped: tuple[Any, ...]) -> Any:
        head = operands[0]
        if head[0] == "nil":
            raise GoTemplateError("nil is not a command")
        if head[0] != "func":
            if len(operands) > 1 or piped:
                raise GoTemplateError("can't give arguments to a non-function")
            return self.operand(head, dot)
        name = head[1]
        if name in ("and", "or"):  # short-circuit, and return the deciding argument itself, as Go does
            arguments = operands[1:]
            if not arguments and not piped:
                raise GoTemplateError(f"{name}: missing arguments")
            value = None
            for position in range(len(arguments) + len(piped)):
                value = self.operand(arguments[position], dot) if position < len(arguments) else piped[0]
                if truth(value) != (name == "and"):
                    return value
            return value
        if name not in _FUNCTIONS:
            raise GoTemplateError(f'function "{name}" not defined')
        arguments = [self.operand(arg, dot) for arg in operands[1:]]
        try:
            return _FUNCTIONS[name](*arguments, *piped)
        except TypeError:
            raise GoTemplateError(f"wrong number of arguments for {name}: {len(arguments) + len(piped)}") from None

    def pipeline(self, pipe: Pipeline, dot: Any) -> Any:
        value: Any = None
        for position, operands in enumerate(pipe.commands):
            value = self.command(operands, dot, (value,) if position else ())
        for name in pipe.decl:
            if pipe.assign:
                self.assign(name, value)
            else:
                self.variables.append((name, value))
        return value

    def walk(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, str):
                self.out.append(node)
            elif isinstance(node, Pipeline):
                value = self.pipeline(node, dot)
                if not node.decl:
                    self.out.append(_text(value))
            elif isinstance(node, IfNode):
                mark = len(self.variables)  # variables declared inside an if end with it
                for pipe, body in node.branches:
                    if truth(self.pipeline(pipe, dot)):
                        self.walk(body, dot)
                        break
                else:
                    if node.otherwise is not None:
                        self.walk(node.otherwise, dot)
                del self.variables[mark:]
            else:
                self.range(node, dot)

    def range(self, node: RangeNode, dot: Any) -> None:
        mark = len(self.variables)
        pipe = Pipeline([], False, node.pipe.commands)
        items = self.pipeline(pipe, dot)
        if items is not None and not isinstance(items, (list, tuple, dict)):
            raise GoTemplateError(f"range can't iterate over {items!r}")
        pairs = list(sorted(items.items()) if isinstance(items, dict) else enumerate(items or ()))
        if len(node.pipe.decl) > 2:
            raise GoTemplateError("too many declarations in range")
        for key, element in pairs:
            if node.pipe.decl:
                values = [element] if len(node.pipe.decl) == 1 else [key, element]
                for name, value in zip(node.pipe.decl, values, strict=True):
                    if node.pipe.assign:
                        self.assign(name, value)
                    else:
                        self.variables.append((name, value))
            iteration = len(self.variables)
            self.walk(node.body, element)
            del self.variables[iteration:]
            if not node.pipe.assign:
                del self.variables[mark:]
        if not pairs and node.otherwise is not None:
            self.walk(node.otherwise, dot)
        del self.variables[mark:]


def render(source: str, data: Any) -> str:
    """Execute the Go template `source` on `data` (dicts are maps, `Message` objects are structs)."""
    state = _State(data)
    state.walk(parse(source), data)
    return "".join(state.out)
