"""Bearer tokens for the streamable-HTTP transport, through the SDK's ``TokenVerifier``.

Tokens come from ``MLSIG_MCP__TOKENS`` (a JSON object, client id -> token) or ``mcp.tokens_file`` (a
JSON object of the same shape, or ``client_id=token`` lines), never from a command line. A request
without a token, or with one that matches none, gets 401 from the SDK's bearer middleware. The
client id of the matching token is the caller the audit records. Tokens are compared in constant
time (``hmac.compare_digest``), every one of them, so the time taken says nothing about which.
"""

from __future__ import annotations

import hmac

from mcp.server.auth.provider import AccessToken

from core.errors import ConfigError
from core.secrets import read_secrets_file
from core.settings import McpSettings

# Shorter tokens are refused at start: a bearer token is the only thing between a caller and the tools.
MIN_TOKEN_CHARS = 16


def load_tokens(settings: McpSettings) -> dict[str, str]:
    """Client id -> token, from the settings and the tokens file; ``ConfigError`` when there is none or
    one is too short (the message names the client, never the token)."""
    tokens = {cid: secret.get_secret_value() for cid, secret in settings.tokens.items()}
    if settings.tokens_file is not None:
        tokens.update(read_secrets_file(settings.tokens_file, "mcp.tokens_file"))
    if not tokens:
        raise ConfigError(
            'the HTTP transport needs bearer tokens: set MLSIG_MCP__TOKENS=\'{"client-id": "token"}\' '
            "or MLSIG_MCP__TOKENS_FILE"
        )
    short = sorted(cid for cid, token in tokens.items() if len(token) < MIN_TOKEN_CHARS)
    if short:
        raise ConfigError(f"MCP tokens of {', '.join(short)} are shorter than {MIN_TOKEN_CHARS} characters")
    return tokens


class StaticTokenVerifier:
    """The SDK's ``TokenVerifier`` over a fixed set of client tokens."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = [(cid, token.encode()) for cid, token in tokens.items()]

    async def verify_token(self, token: str) -> AccessToken | None:
        offered = token.encode()
        match: str | None = None
        for cid, expected in self._tokens:
            if hmac.compare_digest(offered, expected) and match is None:
                match = cid
        if match is None:
            return None
        return AccessToken(token=token, client_id=match, scopes=[])
