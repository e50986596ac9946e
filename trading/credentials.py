"""Exchange API keys for live trading: from the environment or a secrets file, never anywhere else.

``MLSIG_TRADING__API_KEY`` / ``MLSIG_TRADING__API_SECRET`` (pydantic ``SecretStr``: printed as
``**********``), or ``trading.secrets_file`` naming a file readable only by the service user, holding
either a JSON object ``{"api_key": "...", "api_secret": "..."}`` or ``api_key=...`` /
``api_secret=...`` lines. Task arguments carry no credentials (``OrderIntentMessage`` forbids extra
fields), and no log line of this project prints them: error messages name the source, not the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from core.errors import ConfigError
from core.secrets import read_secrets_file
from core.settings import TradingSettings

_KEYS = ("api_key", "api_secret")


@dataclass(frozen=True)
class Credentials:
    api_key: SecretStr
    api_secret: SecretStr

    def __repr__(self) -> str:
        return "Credentials(api_key=SecretStr('**********'), api_secret=SecretStr('**********'))"


def load_credentials(settings: TradingSettings) -> Credentials:
    if settings.api_key is not None and settings.api_secret is not None:
        return Credentials(settings.api_key, settings.api_secret)
    if settings.secrets_file is not None:
        values = _read_secrets_file(settings.secrets_file)
        missing = [k for k in _KEYS if not values.get(k)]
        if missing:
            raise ConfigError(f"trading.secrets_file {settings.secrets_file} lacks {', '.join(missing)}")
        return Credentials(SecretStr(values["api_key"]), SecretStr(values["api_secret"]))
    raise ConfigError(
        "live trading needs API keys: set MLSIG_TRADING__API_KEY and MLSIG_TRADING__API_SECRET, "
        "or MLSIG_TRADING__SECRETS_FILE"
    )


def _read_secrets_file(path: Path) -> dict[str, str]:
    values = read_secrets_file(path, "trading.secrets_file")
    return {name.lower().removeprefix("mlsig_trading__"): value for name, value in values.items()}
