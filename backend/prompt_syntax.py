"""A1111's prompt syntax, read the way A1111 reads it: `<lora:NAME:0.8>` tags, prompt editing
`[from:to:when]`, and attention weights `(word:1.2)`, `(word)`, `[word]`.

Pure text functions (no torch): the front ends take LoRA tags out of what a person types, and the engine
turns the rest into per-step prompts and weighted fragments.
"""

from __future__ import annotations

import re

from backend.errors import RequestError

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


def lora_tag(name: str, strength: float) -> str:
    """The A1111 tag for one LoRA."""
    weight = str(int(strength)) if float(strength).is_integer() else repr(float(strength))
    return f"<lora:{name}:{weight}>"
