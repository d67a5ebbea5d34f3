"""Lexer and parser for the subset of Go's `text/template` that `go_template` executes.

Trim markers follow Go's lexer: `{{- ` removes every space, tab, carriage return and newline before the action,
` -}}` every one after it; a dash not followed by white space is a minus sign. A comment must touch the
delimiters (`{{/* ... */}}`, `{{- /* ... */ -}}`). Literal text and string literals are kept apart from the
actions, and nodes are plain dataclasses that `go_template` walks.
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
class Pipeline:
    decl: list[str]
    assign: bool
    commands: list[list[Any]]  # each command: operands; an operand is ("lit", v) / ("field", ...) / ...


@dataclass
class IfNode:
    branches: list[tuple[Pipeline, list[Any]]] = field(default_factory=list)
    otherwise: list[Any] | None = None


@dataclass
class RangeNode:
    pipe: Pipeline
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
    if source.startswith("/*", position):  # a comment starts right after the delimiter (and trim marker)
        close = source.find("*/", position)
        if close < 0:
            raise GoTemplateError("unclosed comment")
        after = source[close + 2 : close + 6]
        if after.startswith("}}"):
            return close + 2
        if len(after) == 4 and after[0] in SPACE and after[1:] == "-}}":
            return close + 4
        raise GoTemplateError("comment ends before closing delimiter")
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

    def pipeline(self, allow_decl: bool = True, closing: str | None = None) -> Pipeline:
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
        return Pipeline(decl, assign, commands)

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
        if content.startswith("/*"):
            continue
        body = content.strip(SPACE)
        tokens = _tokens(body)
        if not tokens:
            raise GoTemplateError("empty action {{}}")
        keyword = tokens[0].text if tokens[0].kind == "ident" else ""
        parser = _Parser(tokens[1:] if keyword in ("if", "else", "end", "range") else tokens, body)
        if keyword == "if":
            block = IfNode()
            block.branches.append((parser.pipeline(), []))
            current.append(block)
            stack.append((block, current))
            current = block.branches[-1][1]
        elif keyword == "range":
            block = RangeNode(parser.pipeline())
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
                if not isinstance(block, IfNode) or block.otherwise is not None:
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
