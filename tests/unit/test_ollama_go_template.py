"""The Go text/template renderer against outputs worked out by hand from Go's documented semantics."""

from __future__ import annotations

import pytest

from llm_finetuning.export.go_template import GoTemplateError, Message, go_quote, render

pytestmark = pytest.mark.unit

CHAT = [Message("system", "S"), Message("user", "hi"), Message("assistant", "yo"), Message("user", "q")]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # Trim markers remove every space, tab and newline on their side, and only there.
        ("a  \n {{- 1 -}} \n\t b", "a1b"),
        ("a {{ 1 }} b", "a 1 b"),
        ("a \n{{- 1 }} b", "a1 b"),
        ("a {{ 1 -}}\n\n b", "a 1b"),
        # A dash not followed by a space is a minus sign, not a trim marker.
        ("x {{ -1 }} y", "x -1 y"),
        ("x {{- /* a comment */ -}} y", "xy"),
        ("x{{/* a comment */}} y", "x y"),
        # Literals: Go escapes (\xHH is a byte, \u a code point), raw strings keep backslashes.
        (r'{{ "a\tb\u00e9\x41\\\"" }}', 'a\tb\u00e9A\\"'),
        ("{{ `a\\n{{` }}", "a\\n{{"),
        ('{{ "}}" }}', "}}"),
        ('{{ true }} {{ 3 }} {{ 2.5 }} {{ eq .Missing "x" }}', "true 3 2.5 false"),
        # `and`/`or` return the deciding argument, not a bool; `not` returns a bool.
        ('{{ and 1 0 }} {{ and "a" "b" }} {{ or "" "b" }} {{ or 0 "" }} {{ not "" }}', "0 b b  true"),
        (
            '{{ eq "b" "a" "b" }} {{ eq 1 2 }} {{ ne "a" "b" }} {{ lt 1 2 }} {{ ge "a" "b" }}',
            "true false true true false",
        ),
        # len counts bytes of a string; slice and index work on lists and strings.
        ('{{ len "\u00e9" }} {{ len .L }} {{ slice "abc" 1 2 }} {{ len (slice .L 1) }} {{ index .L 2 }}', "2 3 b 2 z"),
        ("{{ .L | len }}", "3"),
        ("{{ (index .Messages 1).Content }}", "hi"),
        # A missing map key is nil (Ollama parses with missingkey=zero).
        ("[{{ .Missing }}]", "[<no value>]"),
        ("{{ if .Missing }}yes{{ else }}no{{ end }}", "no"),
    ],
)
def test_actions_text_and_functions(source: str, expected: str) -> None:
    assert render(source, {"L": ["x", "y", "z"], "Messages": CHAT}) == expected


def test_if_else_if_chain_picks_the_first_true_branch() -> None:
    source = '{{ range .L }}{{ if eq . "a" }}A{{ else if eq . "b" }}B{{ else if . }}?{{ else }}-{{ end }}{{ end }}'
    assert render(source, {"L": ["a", "b", "c", ""]}) == "AB?-"


def test_range_with_index_and_the_last_message_idiom() -> None:
    source = (
        "{{- range $i, $m := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        "{{- $i }}:{{ $m.Role }}{{ if $last }}!{{ else }},{{ end }}\n"
        "{{- end }}"
    )
    assert render(source, {"Messages": CHAT}) == "0:system,1:user,2:assistant,3:user!"
    # One variable is the element; the dot is the element too; `else` runs for an empty list.
    assert render("{{ range $m := .Messages }}{{ $m.Role }}/{{ .Content }} {{ end }}", {"Messages": CHAT[:2]}) == (
        "system/S user/hi "
    )
    assert render("{{ range .Messages }}x{{ else }}empty{{ end }}", {"Messages": []}) == "empty"
    assert render("{{ range .Missing }}x{{ else }}nil is empty{{ end }}", {}) == "nil is empty"


def test_variables_assignment_reaches_outside_but_declarations_end_with_their_block() -> None:
    source = '{{ $seen := "none" }}{{ range .L }}{{ $seen = . }}{{ end }}{{ $seen }}'
    assert render(source, {"L": ["x", "y"]}) == "y"
    # The first-user idiom: a variable cleared after its first use.
    source = '{{ $s := "S" }}{{ range .L }}{{ if $s }}[{{ $s }}]{{ $s = "" }}{{ end }}{{ . }}{{ end }}'
    assert render(source, {"L": ["a", "b"]}) == "[S]ab"
    with pytest.raises(GoTemplateError, match="undefined variable: \\$x"):
        render("{{ range .L }}{{ $x := . }}{{ end }}{{ $x }}", {"L": ["a"]})
    with pytest.raises(GoTemplateError, match="undefined variable"):
        render("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}", {})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{{ eq "1" 1 }}', "incompatible types"),
        ("{{ .Messages }}", "outside the supported subset"),
        ("{{ (index .Messages 0).Nope }}", "can't evaluate field Nope"),
        ("{{ upper .X }}", 'function "upper" not defined'),
        ("{{ if true }}open", "no {{end}}"),
        ("{{ end }}", "unexpected"),
        ("{{ with .X }}{{ end }}", "outside the supported template subset"),
        ("{{ slice .Messages 2 9 }}", "out of range"),
        ("{{ not 1 2 }}", "wrong number of arguments"),
        ("text {{ .X", "unclosed action"),
        ("{{ nil }}", "nil is not a command"),
        ("{{ /* a comment must touch the delimiters */ }}", "cannot parse"),
    ],
)
def test_unsupported_or_failing_templates_raise(source: str, message: str) -> None:
    with pytest.raises(GoTemplateError, match=message):
        render(source, {"Messages": CHAT, "X": "x"})


@pytest.mark.parametrize(
    "text",
    ['quote " backslash \\ brace }} {{', "lines\n\r\ttab", "zero\u200bwidth nbsp\u00a0 bell\x07", "emoji 🦙 \u4f60"],
)
def test_go_quote_round_trips_and_escapes_what_a_modelfile_would_drop(text: str) -> None:
    literal = go_quote(text)
    assert render("{{ " + literal + " }}", {}) == text
    assert all(char.isprintable() for char in literal)
