"""Secrets files: one reader for every setting that names one (``trading.secrets_file``,
``mcp.tokens_file``). A file holds a JSON object, or ``name=value`` lines (``#`` comments, values
with or without quotes). Errors name the setting and the path, never the file's content."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import ConfigError


def read_secrets_file(path: Path, setting: str) -> dict[str, str]:
    """The file's names and values as written (callers normalise names as they need)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{setting} {path} cannot be read: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            # The message would quote the file's content: say where, never what.
            raise ConfigError(f"{setting} {path} is not valid JSON") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{setting} {path} must hold a JSON object")
        return {str(k): str(v) for k, v in loaded.items()}
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.strip().startswith("#"):
            out[name.strip()] = value.strip().strip("'\"")
    return out
