"""A small renderer for the subset of Go's text/template that ft's Ollama TEMPLATEs use.

Ollama cannot be installed here, so the tests render the Modelfile's TEMPLATE themselves: text,
`{{ .Field }}`, `{{ $.Field }}`, `{{ $var }}`, `{{ if PIPE }}` / `{{ else if PIPE }}` / `{{ else }}`
/ `{{ end }}`, `{{ range .Messages }}` and `{{ range $i, $m := .Messages }}`, the functions eq,
ne, and, or, not, string and integer literals, and `{{-` / `-}}` whitespace trimming. Anything
else raises, so a template using more than this cannot pass unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+')


@dataclass
class _Node:
    kind: str  # text | expr | if | range
    value: Any = None  # text, expression tokens, or range (vars, expr)
    branches: list[tuple[list[str] | None, list[_Node]]] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """[(kind, text)]: 'text' pieces and 'action' bodies, with trim markers applied."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = source[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(items: list[tuple[str, str]], i: int, stop: tuple[str, ...]) -> tuple[list[_Node], int, str]:
    """Nodes until an action starting with one of `stop`; returns (nodes, next index, stop action)."""
    nodes: list[_Node] = []
    while i < len(items):
        kind, text = items[i]
        i += 1
        if kind == "text":
            nodes.append(_Node("text", text))
        elif text == "end" or text == "else" or text.startswith("else if "):
            if not any(text == s or text.startswith(s + " ") for s in stop):
                raise ValueError(f"unexpected {{{{ {text} }}}}")
            return nodes, i, text
        elif text.startswith("if "):
            node = _Node("if")
            cond: list[str] | None = _TOKEN.findall(text[3:])
            while True:
                body, i, ended = _parse(items, i, ("end", "else"))
                node.branches.append((cond, body))
                if ended == "end":
                    break
                cond = _TOKEN.findall(ended[8:]) if ended.startswith("else if ") else None
            nodes.append(node)
        elif text.startswith("range "):
            spec = text[6:]
            names, _, expr = spec.rpartition(":=")
            body, i, _ = _parse(items, i, ("end",))
            vars_ = [v.strip() for v in names.split(",")] if names else []
            nodes.append(_Node("range", (vars_, _TOKEN.findall(expr)), [(None, body)]))
        else:
            nodes.append(_Node("expr", _TOKEN.findall(text)))
    return nodes, i, ""


def _operand(tok: str, dot: Any, env: dict[str, Any]) -> Any:
    if tok.startswith('"'):
        return tok[1:-1].encode().decode("unicode_escape")
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if tok.startswith("."):
        base, path = dot, tok[1:]
    elif tok.startswith("$"):
        name, _, path = tok.partition(".")
        if name not in env:
            raise ValueError(f"undefined variable {name}")
        base = env[name]
    else:
        raise ValueError(f"unsupported operand {tok!r}")
    for part in filter(None, path.split(".")):
        base = base[part]
    return base


_FUNCS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
    "not": lambda a: not _truth(a),
}


def _eval(tokens: list[str], dot: Any, env: dict[str, Any]) -> Any:
    """A pipeline without `|`: an operand, or a function applied to operands / parenthesised calls."""
    args: list[Any] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                j += 1
            args.append(_eval(tokens[i + 1:j - 1], dot, env))
            i = j
            continue
        args.append(tok if (i == 0 and tok in _FUNCS) else _operand(tok, dot, env))
        i += 1
    if args and isinstance(args[0], str) and tokens[0] in _FUNCS:
        return _FUNCS[tokens[0]](*args[1:])
    if len(args) != 1:
        raise ValueError(f"unsupported pipeline {' '.join(tokens)}")
    return args[0]


def _truth(value: Any) -> bool:
    return bool(value)


def _run(nodes: list[_Node], dot: Any, env: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "expr":
            out.append(str(_eval(node.value, dot, env)))
        elif node.kind == "if":
            for cond, body in node.branches:
                if cond is None or _truth(_eval(cond, dot, env)):
                    _run(body, dot, env, out)
                    break
        else:
            names, expr = node.value
            for index, item in enumerate(_eval(expr, dot, env)):
                scope = dict(env)
                if len(names) == 2:
                    scope[names[0]], scope[names[1]] = index, item
                elif len(names) == 1:
                    scope[names[0]] = item
                _run(node.branches[0][1], item, scope, out)


def render(source: str, data: dict[str, Any]) -> str:
    """`source` rendered with `data` as the dot (and `$`)."""
    nodes, _, _ = _parse(_lex(source), 0, ())
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)


def ollama_values(messages: list[dict[str, str]], default_system: str | None) -> dict[str, Any]:
    """What Ollama passes a template: the Modelfile SYSTEM inserted when the chat has no system
    message, `.System` the system messages' text, `.Messages` every message with Role/Content."""
    if default_system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": default_system}, *messages]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
