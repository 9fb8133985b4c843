"""Prompt text as it enters the studio (panels, CLI): control characters removed, length capped.

Control characters and lone surrogates (pasted from terminals or other programs) would otherwise end up
in PNG text chunks, JSON recipes and A1111 text, where some readers choke on them. Newlines stay: a
prompt may span lines. Text longer than the request limit is cut there rather than refused.
"""

from __future__ import annotations

import unicodedata

from backend.request import MAX_PROMPT_CHARS


def clean_prompt(text: str, limit: int = MAX_PROMPT_CHARS) -> tuple[str, str | None]:
    """The prompt with control characters removed and cut to `limit`, and a notice saying what changed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    kept = "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cs"))
    notices = []
    if len(kept) != len(text):
        notices.append(f"removed {len(text) - len(kept)} control character(s)")
    if len(kept) > limit:
        notices.append(f"cut to {limit} characters (it had {len(kept)})")
        kept = kept[:limit]
    return kept, ("Prompt " + " and ".join(notices) + ".") if notices else None
