"""Reference image sets for the patch engine: load a folder, read tags, pick references for a prompt."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend import strict_json
from backend.errors import ImageError, ReferencesError
from backend.images import open_image, pil_to_array

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "assets" / "references"
SIDECAR = "references.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MIN_SIDE = 16  # smaller images have too few patches to draw from
MAX_REFERENCES = 256  # every reference is a key set for every pixel: more would be unusably slow


@dataclass(frozen=True)
class Reference:
    """One reference image (H×W×3 uint8) with its name (file stem) and lower-case tags."""

    name: str
    pixels: np.ndarray
    tags: frozenset[str]


@dataclass(frozen=True)
class ReferenceSet:
    """The references of one folder, with a hash that identifies the set in recipes."""

    folder: Path
    references: tuple[Reference, ...]
    digest: str
    skipped: tuple[str, ...] = ()  # one line per image file that could not be used, naming it and why

    @property
    def names(self) -> list[str]:
        """Reference names in load order (the attribution map's indices)."""
        return [r.name for r in self.references]


def words(text: str) -> list[str]:
    """Lower-case words of a prompt, tag or file name (split on anything not a letter or digit)."""
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def _stem(word: str) -> str:
    # Plurals are enough for material tags ("bricks" finds "brick", "rubies" finds "ruby"); other forms
    # ("golden", "wooden") are listed as synonyms in the metadata, where a person can see and edit them.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def folder_key(folder: Path) -> tuple:
    """What decides whether a cached set is stale: the folder and every file's name, size and mtime."""
    try:
        entries = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()
        )
    except OSError:
        return (str(folder), None)
    return (str(folder.resolve()), tuple(entries))


def load_references(folder: str | Path) -> ReferenceSet:
    """Load every image in a folder as an RGB reference; raise ReferencesError with a clear reason."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise ReferencesError(f"reference folder {path} does not exist")
    if not path.is_dir():
        raise ReferencesError(f"{path} is not a folder; choose a folder of reference images")
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise ReferencesError(f"cannot read reference folder {path}: {exc.strerror or exc}") from None
    if not files:
        raise ReferencesError(
            f"reference folder {path} has no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    if len(files) > MAX_REFERENCES:
        raise ReferencesError(
            f"reference folder {path} has {len(files)} images; the limit is {MAX_REFERENCES}"
        )
    sidecar = _read_sidecar(path)
    digest = hashlib.sha256()
    refs = []
    skipped = []
    for file in files:
        try:
            pixels = _read_reference(file)
        except ReferencesError as exc:  # one bad file must not take the whole folder with it
            skipped.append(str(exc))
            continue
        tags = frozenset(_stem(w) for w in words(file.stem)) | sidecar.get(file.name, frozenset())
        refs.append(Reference(file.stem, pixels, tags))
        digest.update(file.name.encode())
        digest.update(hashlib.sha256(pixels.tobytes()).digest())
    if not refs:
        raise ReferencesError(f"reference folder {path} has no usable images: {'; '.join(skipped)}")
    return ReferenceSet(path, tuple(refs), digest.hexdigest()[:16], tuple(skipped))


def _read_reference(file: Path) -> np.ndarray:
    try:
        image = open_image(file)
    except ImageError as exc:
        raise ReferencesError(f"reference {file.name} cannot be used: {exc}") from None
    if image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
        # CMYK, YCbCr, LAB...: PIL's conversions of these are approximate, so say so rather than guess.
        raise ReferencesError(
            f"reference {file.name} is in {image.mode} colour mode; save it as RGB or greyscale"
        )
    if min(image.size) < MIN_SIDE:
        w, h = image.size
        raise ReferencesError(f"reference {file.name} is {w}×{h}; references must be at least {MIN_SIDE} px")
    return pil_to_array(image)


def _read_sidecar(folder: Path) -> dict[str, frozenset[str]]:
    """Tags per file name from references.json: a list of {"file": ..., "tags": [...], "synonyms": [...]}.

    Synonyms are tags too; they are kept apart in the file so a person sees which words are the
    material's own and which are other words for it.
    """
    path = folder / SIDECAR
    if not path.is_file():
        return {}

    def listed(entry: dict, key: str) -> list[str]:
        value = entry.get(key, [])
        return [value] if isinstance(value, str) else [str(v) for v in value]

    try:
        entries = strict_json.loads(path.read_text(encoding="utf-8"))
        return {
            str(e["file"]): frozenset(
                _stem(w) for tag in listed(e, "tags") + listed(e, "synonyms") for w in words(tag)
            )
            for e in entries
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ReferencesError(f"{path} is not a valid tag list ({exc.__class__.__name__}: {exc})") from None


STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "its",
        "like",
        "made",
        "of",
        "on",
        "or",
        "out",
        "over",
        "some",
        "the",
        "them",
        "these",
        "they",
        "this",
        "those",
        "to",
        "under",
        "very",
        "with",
        "without",
    ]
)


@dataclass(frozen=True)
class Selection:
    """Which references a prompt chose and each one's share of the weight, with what matched what.

    Every prompt word that names references splits an equal part of the weight among all of them, so
    "gold" gives hammered_gold and rose_gold half each. `matches` maps each matching word to the
    references it named; `unmatched` lists the words that named none (reported, not silently dropped).
    """

    indices: tuple[int, ...]
    shares: tuple[float, ...]
    matches: tuple[tuple[str, tuple[str, ...]], ...] = ()
    unmatched: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # references the negative prompt took out

    def share_of(self) -> dict[int, float]:
        """Share by reference index."""
        return dict(zip(self.indices, self.shares, strict=True))


def prompt_words(text: str) -> list[str]:
    """The words of a prompt that can name a reference: no stop words, no bare numbers, no repeats."""
    return list(dict.fromkeys(w for w in words(text) if w not in STOPWORDS and not w.isdigit()))


def match_prompt(refs: ReferenceSet, prompt: str, negative: str = "") -> Selection:
    """The references a prompt asks for, each word's weight shared among every reference it names.

    A word names a reference when its stem is among the reference's tags (name words, tags, synonyms).
    An empty prompt, or one that names no reference, shares the weight equally among them all. The
    negative prompt removes the references its words name.
    """
    weight: dict[int, float] = {}
    matches, unmatched = [], []
    for word in prompt_words(prompt):
        named = [i for i, r in enumerate(refs.references) if _stem(word) in r.tags]
        if not named:
            unmatched.append(word)
            continue
        matches.append((word, tuple(refs.references[i].name for i in named)))
        for i in named:
            weight[i] = weight.get(i, 0.0) + 1.0 / len(named)
    if not weight:
        weight = dict.fromkeys(range(len(refs.references)), 1.0)
    unwanted = {_stem(w) for w in prompt_words(negative)}
    removed = [i for i in weight if refs.references[i].tags & unwanted]
    kept = sorted(i for i in weight if i not in removed)
    if not kept:
        raise ReferencesError("the negative prompt removes every reference; nothing is left to draw from")
    total = sum(weight[i] for i in kept)
    return Selection(
        indices=tuple(kept),
        shares=tuple(weight[i] / total for i in kept),
        matches=tuple(matches),
        unmatched=tuple(unmatched),
        removed=tuple(refs.references[i].name for i in sorted(removed)),
    )


def selection_summary(refs: ReferenceSet, selection: Selection) -> tuple[str, str | None]:
    """For a person: the chosen references with their shares, and a note on unmatched words (or None)."""
    order = sorted(zip(selection.shares, selection.indices, strict=True), key=lambda si: (-si[0], si[1]))
    chosen = ", ".join(f"{refs.references[i].name} {share:.0%}" for share, i in order)
    if not selection.unmatched:
        return chosen, None
    quoted = ", ".join(f"'{w}'" for w in selection.unmatched)
    several = len(selection.unmatched) > 1
    note = (
        f"no reference is tagged {quoted}; {'those words do' if several else 'that word does'} not change "
        "which references are used (see references.json for the tags)"
    )
    return chosen, note


def select(refs: ReferenceSet, prompt: str, negative: str = "") -> list[int]:
    """Indices of the references a prompt asks for (see `match_prompt`)."""
    return list(match_prompt(refs, prompt, negative).indices)


def log_priors(refs: ReferenceSet, indices: list[int], weights: tuple[tuple[str, float], ...]) -> list[float]:
    """Each selected reference's log-prior: the sum of the weights whose name or tag matches it."""
    out = []
    for i in indices:
        ref = refs.references[i]
        total = 0.0
        for key, value in weights:
            key_words = {_stem(w) for w in words(key)}
            if key == ref.name or (key_words and key_words <= ref.tags):
                total += value
        out.append(total)
    return out


def fit(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale an image to cover width×height and crop the centre, so patches keep their proportions."""
    h, w = pixels.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    image = Image.fromarray(pixels)
    if size != (w, h):
        image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))
