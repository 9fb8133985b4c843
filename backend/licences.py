"""The licence a model's own files name: shown in the engine picker, kept in recipes and `studio-cli info`."""

from __future__ import annotations

from pathlib import Path


def model_licence(source: str | Path) -> str:
    """The licence a model's files name, "" if they name none.

    A single .safetensors file: its header's `modelspec.license` (Stability's model-spec metadata). A
    diffusers folder (or hub snapshot): its model card's `license`, or `license_name` when that is "other".
    """
    source = Path(source)
    try:
        if source.is_file():
            return _header_licence(source) if source.suffix.lower() == ".safetensors" else ""
        readme = source / "README.md"
        return _card_licence(readme) if readme.is_file() else ""
    except OSError:
        pass
    return ""


def _header_licence(path: Path) -> str:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError):
        return ""
    return str(metadata.get("modelspec.license", "")).strip()


def _card_licence(readme: Path) -> str:
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data
    except Exception:  # a card without YAML, or YAML that does not parse: no licence named
        return ""
    licence = str(getattr(data, "license", None) or "").strip()
    name = str(getattr(data, "license_name", None) or "").strip()
    return name if licence == "other" and name else licence
