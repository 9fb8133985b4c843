"""A1111's prompt syntax, read the way A1111 reads it: `<lora:NAME:0.8>` tags, prompt editing
`[from:to:when]`, and attention weights `(word:1.2)`, `(word)`, `[word]`.

Pure text functions (no torch): the front ends take LoRA tags out of what a person types, and the engine
turns the rest into per-step prompts and weighted fragments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from backend.errors import RequestError
from backend.request import Lora

# A1111's extra-network tag: <lora:name:te_weight[:unet_weight]>; ours writes <lora:name:weight>.
_LORA_TAG = re.compile(r"[ \t]*<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)


def split_lora_tags(text: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its `<lora:NAME:STRENGTH>` tags, and the (name, strength) pairs they named.

    A tag without a strength means 1, as in A1111. A tag whose strength is not a number raises RequestError.
    """
    found: list[tuple[str, float]] = []

    def take(match: re.Match[str]) -> str:
        name, weight = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            found.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise RequestError(f"<lora:{name}:{weight}>: the strength should be a number") from None
        return ""

    return _LORA_TAG.sub(take, text), found


def merge_lora_tags(prompt: str, loras: tuple[Lora, ...]) -> tuple[str, tuple[Lora, ...]]:
    """The prompt without its tags, and `loras` with the tags' LoRAs: a tag naming a listed LoRA (by name or
    file stem) sets its strength, other tags add LoRAs at the end."""
    text, tags = split_lora_tags(prompt)
    out = list(loras)
    for name, strength in tags:
        same = [
            n for n, x in enumerate(out) if name in (x.name, PurePath(x.name).stem, PurePath(x.name).name)
        ]
        if same:
            out[same[0]] = Lora(out[same[0]].name, strength)
        else:
            out.append(Lora(name, strength))
    return text, tuple(out)


def lora_tag(name: str, strength: float) -> str:
    """The A1111 tag for one LoRA."""
    weight = str(int(strength)) if float(strength).is_integer() else repr(float(strength))
    return f"<lora:{name}:{weight}>"


# --- Prompt editing: [from:to:when], [to:when], [from::when], [a|b] ------------------------------------

_TOKEN = re.compile(r"\\.|[][():|]|[^][():|\\]+|\\", re.S)


@dataclass(frozen=True)
class _Scheduled:
    before: tuple
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternate:
    options: tuple


@dataclass(frozen=True)
class _Group:
    """Brackets that are not editing (emphasis, or plain text): kept in the text around their content."""

    open: str
    parts: tuple
    close: str


def _parse(tokens: list[str], i: int, closer: str | None) -> tuple[list, int, bool]:
    """Nodes up to `closer` (or the end): (nodes, index after the closer, whether it was found)."""
    nodes: list = []
    while i < len(tokens):
        tok = tokens[i]
        if closer is not None and tok == closer:
            return nodes, i + 1, True
        if tok in "([":
            inner, j, closed = _parse(tokens, i + 1, ")" if tok == "(" else "]")
            if not closed:  # unbalanced: the bracket is plain text
                nodes.append(tok)
                i += 1
                continue
            nodes.append(_bracket(tok, inner))
            i = j
            continue
        nodes.append(tok)
        i += 1
    return nodes, i, closer is None


def _split(nodes: list, sep: str) -> list[list]:
    parts: list[list] = [[]]
    for node in nodes:
        if node == sep:
            parts.append([])
        else:
            parts[-1].append(node)
    return parts


def _bracket(open_: str, inner: list):  # noqa: ANN202 - one of the node types
    if open_ == "[":
        options = _split(inner, "|")
        if len(options) > 1:
            return _Alternate(tuple(tuple(o) for o in options))
        parts = _split(inner, ":")
        if len(parts) in (2, 3) and all(isinstance(n, str) for n in parts[-1]):
            try:
                when = float("".join(parts[-1]).strip())
            except ValueError:
                when = None
            if when is not None and when >= 0:
                before = tuple(parts[0]) if len(parts) == 3 else ()
                after = tuple(parts[1] if len(parts) == 3 else parts[0])
                return _Scheduled(before, after, when)
    return _Group(open_, tuple(inner), ")" if open_ == "(" else "]")


def _render(nodes, step: int, steps: int) -> str:  # noqa: ANN001 - a node sequence
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            switch = node.when * steps if node.when < 1 else node.when
            out.append(_render(node.before if step < min(steps, int(switch)) else node.after, step, steps))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[step % len(node.options)], step, steps))
        else:
            out.append(node.open + _render(node.parts, step, steps) + node.close)
    return "".join(out)


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """The prompt at each step of a run, as (first step index, text) from step 0, like A1111's editing.

    `[from:to:when]` uses `from` before the switch and `to` from it on; `when` below 1 is a fraction of the
    steps, otherwise a step count. `[to:when]` adds text, `[from::when]` removes it, `[a|b]` alternates every
    step. Other brackets (emphasis) stay in the text; unbalanced ones are plain text.
    """
    tree, _, _ = _parse(_TOKEN.findall(text), 0, None)
    if not any(isinstance(n, (_Scheduled, _Alternate, _Group)) for n in tree):
        return [(0, text)]
    out: list[tuple[int, str]] = []
    for step in range(max(1, steps)):
        current = _render(tree, step, steps)
        if not out or out[-1][1] != current:
            out.append((step, current))
    return out


# --- Attention weights: (word:1.2), (word), [word] ----------------------------------------------------

_ATTENTION = re.compile(r"\\[\\()\[\]]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
UP, DOWN = 1.1, 1 / 1.1  # A1111's factors for (word) and [word]


def weighted_fragments(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) runs, read as A1111 reads emphasis.

    `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:1.5)` sets a factor; they nest. `\\(` and friends are
    literal brackets. Brackets left open apply to the end, as in A1111.
    """
    runs: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\") and len(piece) == 2:
            runs.append([piece[1], 1.0])
        elif piece == "(":
            rounds.append(len(runs))
        elif piece == "[":
            squares.append(len(runs))
        elif weight is not None and rounds:
            try:
                scale(rounds.pop(), float(weight))
            except ValueError:  # "(x:1.2.3)": not a number, the text stays as typed
                runs.append([piece, 1.0])
        elif piece == ")" and rounds:
            scale(rounds.pop(), UP)
        elif piece == "]" and squares:
            scale(squares.pop(), DOWN)
        else:
            runs.append([piece, 1.0])
    for start in rounds:
        scale(start, UP)
    for start in squares:
        scale(start, DOWN)
    merged: list[tuple[str, float]] = []
    for piece, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def is_weighted(fragments: list[tuple[str, float]]) -> bool:
    """Whether any run has a weight other than 1."""
    return any(weight != 1.0 for _, weight in fragments)
