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

import re
from dataclasses import dataclass, field
from typing import Any

SPACE = " \t\r\n"  # what Go's trim markers remove
_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<op>:=|[=(),|])|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)|(?P<char>'(?:[^'\\]|\\.)+')"""
    r"""|(?P<num>[+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<var>\$\w*)|(?P<field>(?:\.\w+)+)|(?P<dot>\.)|(?P<ident>\w+)"""
)
_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}


class GoTemplateError(ValueError):
    """The template is outside the supported subset, or fails to execute (as it would in Go)."""


@dataclass(frozen=True)
class Message:
    """One chat message as Ollama passes it to a template (`.Role`, `.Content`): a struct, not a map."""

    Role: str
    Content: str


# ------------------------------------------------------------------------------------------- literals
def go_quote(text: str) -> str:
    """`text` as a Go interpreted string literal; characters that are not printable are escaped, so the
    literal survives files (a Modelfile) that drop them."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out) + '"'


def _unquote(literal: str) -> str:
    """Go's interpretation of a double-quoted string literal (escapes may spell raw UTF-8 bytes)."""
    body, out, i = literal[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        code = body[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code == "x":
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif code in "uU":
            width = 4 if code == "u" else 8
            out += chr(int(body[i + 2 : i + 2 + width], 16)).encode()
            i += 2 + width
        elif code in "01234567":
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            raise GoTemplateError(f"unknown escape sequence \\{code} in {literal}")
    return out.decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------- parsing
@dataclass
class _Token:
    kind: str
    text: str
    spaced: bool  # preceded by white space (a field chain applies to the operand it touches)


@dataclass
class _Pipeline:
    decl: list[str]
    assign: bool
    commands: list[list[Any]]  # each command: operands; an operand is ("lit", v) / ("field", ...) / ...


@dataclass
class _If:
    branches: list[tuple[_Pipeline, list[Any]]] = field(default_factory=list)
    otherwise: list[Any] | None = None


@dataclass
class _Range:
    pipe: _Pipeline
    body: list[Any] = field(default_factory=list)
    otherwise: list[Any] | None = None


def _split(source: str) -> list[tuple[str, str]]:
    """Text and action items, with trim markers applied to the neighbouring text as Go's lexer does."""
    items: list[tuple[str, str]] = []
    position, trim_next = 0, False
    while True:
        start = source.find("{{", position)
        text = source[position:] if start < 0 else source[position:start]
        if trim_next:
            text = text.lstrip(SPACE)
        if start < 0:
            items.append(("text", text))
            return items
        inner_start = start + 2
        if source[inner_start : inner_start + 1] == "-" and source[inner_start + 1 : inner_start + 2] in tuple(SPACE):
            text = text.rstrip(SPACE)
            inner_start += 2
        items.append(("text", text))
        end = _action_end(source, inner_start)
        inner = source[inner_start:end]
        trim_next = len(inner) >= 2 and inner[-1] == "-" and inner[-2] in SPACE
        if trim_next:
            inner = inner[:-2]
        items.append(("action", inner))
        position = end + 2


def _action_end(source: str, position: int) -> int:
    """Index of the `}}` that closes the action starting at `position`, skipping quoted text and comments."""
    stripped = source[position:].lstrip(SPACE)
    if stripped.startswith("/*"):
        close = source.find("*/", position)
        if close < 0:
            raise GoTemplateError("unclosed comment")
        end = source.find("}}", close)
        if end < 0 or source[close + 2 : end].strip(SPACE + "-"):
            raise GoTemplateError("comment must be followed by }}")
        return end
    i = position
    while i < len(source):
        if source.startswith("}}", i):
            return i
        quote = source[i]
        if quote in "\"'`":
            i += 1
            while i < len(source) and source[i] != quote:
                i += 2 if source[i] == "\\" and quote != "`" else 1
        i += 1
    raise GoTemplateError("unclosed action: a {{ has no matching }}")


def _tokens(action: str) -> list[_Token]:
    tokens, position, spaced = [], 0, True
    while position < len(action):
        match = _TOKEN.match(action, position)
        if match is None:
            raise GoTemplateError(f"cannot parse {action[position:]!r} in {{{{{action}}}}}")
        position = match.end()
        if match.lastgroup == "space":
            spaced = True
            continue
        tokens.append(_Token(match.lastgroup or "", match.group(), spaced))
        spaced = False
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token], action: str) -> None:
        self.tokens, self.index, self.action = tokens, 0, action

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise GoTemplateError(f"unexpected end of {{{{{self.action}}}}}")
        self.index += 1
        return token

    def pipeline(self, allow_decl: bool = True, closing: str | None = None) -> _Pipeline:
        decl: list[str] = []
        assign = False
        # A declaration is `$a :=`, `$a, $b :=` (range) or an assignment `$a =`.
        if allow_decl:
            save = self.index
            names = []
            while (token := self.peek()) is not None and token.kind == "var":
                names.append(self.take().text)
                following = self.peek()
                if following is not None and following.text == ",":
                    self.take()
                    continue
                break
            following = self.peek()
            if names and following is not None and following.text in (":=", "="):
                self.take()
                decl, assign = names, following.text == "="
            else:
                self.index = save
        commands = [self.command(closing)]
        while (token := self.peek()) is not None and token.text == "|":
            self.take()
            commands.append(self.command(closing))
        return _Pipeline(decl, assign, commands)

    def command(self, closing: str | None) -> list[Any]:
        operands = []
        while (token := self.peek()) is not None and token.text not in ("|", closing):
            operands.append(self.operand())
        if not operands:
            raise GoTemplateError(f"missing value in {{{{{self.action}}}}}")
        return operands

    def operand(self) -> Any:
        token = self.take()
        if token.text == "(":
            node: Any = ("pipe", self.pipeline(allow_decl=False, closing=")"))
            if self.take().text != ")":
                raise GoTemplateError(f"unclosed parenthesis in {{{{{self.action}}}}}")
        elif token.kind == "str":
            node = ("lit", _unquote(token.text))
        elif token.kind == "raw":
            node = ("lit", token.text[1:-1])
        elif token.kind == "char":
            node = ("lit", ord(_unquote('"' + token.text[1:-1] + '"')))
        elif token.kind == "num":
            node = ("lit", float(token.text) if any(c in token.text for c in ".eE") else int(token.text))
        elif token.kind == "var":
            node = ("var", token.text)
        elif token.kind == "field":
            return ("field", ("dot",), tuple(token.text[1:].split(".")))
        elif token.kind == "dot":
            node = ("dot",)
        elif token.kind == "ident":
            node = {"true": ("lit", True), "false": ("lit", False), "nil": ("nil",)}.get(
                token.text, ("func", token.text)
            )
        else:
            raise GoTemplateError(f"unexpected {token.text!r} in {{{{{self.action}}}}}")
        following = self.peek()
        if following is not None and following.kind == "field" and not following.spaced:
            self.take()
            return ("field", node, tuple(following.text[1:].split(".")))
        return node


def parse(source: str) -> list[Any]:
    """The template's node tree; raises `GoTemplateError` for syntax outside the supported subset."""
    root: list[Any] = []
    stack: list[tuple[Any, list[Any]]] = []  # (open block, the list now being filled)
    current = root
    for kind, content in _split(source):
        if kind == "text":
            if content:
                current.append(content)
            continue
        body = content.strip(SPACE)
        if body.startswith("/*"):
            continue
        tokens = _tokens(body)
        if not tokens:
            raise GoTemplateError("empty action {{}}")
        keyword = tokens[0].text if tokens[0].kind == "ident" else ""
        parser = _Parser(tokens[1:] if keyword in ("if", "else", "end", "range") else tokens, body)
        if keyword == "if":
            block = _If()
            block.branches.append((parser.pipeline(), []))
            current.append(block)
            stack.append((block, current))
            current = block.branches[-1][1]
        elif keyword == "range":
            block = _Range(parser.pipeline())
            current.append(block)
            stack.append((block, current))
            current = block.body
        elif keyword == "else":
            if not stack:
                raise GoTemplateError("{{else}} outside if/range")
            block = stack[-1][0]
            following = parser.peek()
            if following is not None and following.text == "if":
                parser.take()
                if not isinstance(block, _If) or block.otherwise is not None:
                    raise GoTemplateError("{{else if}} must follow if")
                block.branches.append((parser.pipeline(), []))
                current = block.branches[-1][1]
                continue
            if block.otherwise is not None or following is not None:
                raise GoTemplateError(f"unexpected {{{{{body}}}}}")
            block.otherwise = current = []
        elif keyword == "end":
            if not stack or parser.peek() is not None:
                raise GoTemplateError(f"unexpected {{{{{body}}}}}")
            current = stack.pop()[1]
        elif keyword in ("with", "define", "template", "block", "break", "continue"):
            raise GoTemplateError(f"{{{{{keyword}}}}} is outside the supported template subset")
        else:
            current.append(parser.pipeline())
    if stack:
        raise GoTemplateError("unexpected end of template: an if/range has no {{end}}")
    return root


# ------------------------------------------------------------------------------------------- execution
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

    def pipeline(self, pipe: _Pipeline, dot: Any) -> Any:
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
            elif isinstance(node, _Pipeline):
                value = self.pipeline(node, dot)
                if not node.decl:
                    self.out.append(_text(value))
            elif isinstance(node, _If):
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

    def range(self, node: _Range, dot: Any) -> None:
        mark = len(self.variables)
        pipe = _Pipeline([], False, node.pipe.commands)
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
