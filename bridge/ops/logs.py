"""Log set-up: text or JSON lines on stderr, each line about a call carrying its call id, and no secret ever.

Redaction happens on the finished line, in the handler's formatter, so it covers our lines, exception
tracebacks and third-party loggers alike (websockets at DEBUG prints the request headers of every vendor
handshake: `Authorization: Bearer ...`, `api-key`, `x-goog-api-key`, Deepgram's token subprotocol, `key=`
query parameters). Two nets: every configured secret value (and the Basic-auth token made of ARI's
credentials), and header/parameter patterns that carry credentials whatever their value.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from bridge.config import Settings

MASK = "***"
_PATTERNS = [
    # header lines as websockets/aiohttp print them: "> Authorization: Bearer x", "api-key: x", "X-Goog-Api-Key: x"
    r"((?:proxy-)?authorization|api-key|x-goog-api-key|x-api-key)(['\"]?\s*[:=]\s*)[^\r\n,}\]]+",
    # Deepgram authenticates with the subprotocols "token, <key>"
    r"(sec-websocket-protocol)(['\"]?\s*[:=]\s*)[^\r\n}\]]+",
    # query parameters and key=value pairs: ?key=..., &api_key=..., password=..., token=...
    r"(\b(?:key|api_key|apikey|access_token|token|password|passwd|secret))(=)[^&\s\"',;)]+",
    # "Bearer xyz", "Token xyz", "Basic xyz" wherever they appear
    r"(\b(?:bearer|token|basic))(\s+)[A-Za-z0-9._~+/=-]{8,}",
    # a password in a URL's user info: scheme://user:password@host
    r"(://[^/\s:@]+)(:)[^/\s@]+(?=@)",
]


class Redactor:
    """Replaces secrets in any text: the settings' secret values first, then credential-shaped patterns."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._values = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self._patterns = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)

    @classmethod
    def for_settings(cls, settings: Settings) -> Redactor:
        return cls(secret_values(settings))

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(MASK, text)
        return self._patterns.sub(_mask_match, text)


def _mask_match(m: re.Match[str]) -> str:
    groups = [g for g in m.groups() if g is not None]
    return "".join(groups[:2]) + MASK if len(groups) >= 2 else MASK


def secret_values(settings: Settings) -> list[str]:
    """Every non-empty secret setting, and the forms they travel in (ARI's Basic token)."""
    values = [getattr(settings, f.name) for f in dataclasses.fields(settings) if f.metadata.get("secret")]
    values = [v for v in values if isinstance(v, str) and v]
    if settings.ari_password:
        values.append(base64.b64encode(f"{settings.ari_username}:{settings.ari_password}".encode()).decode())
    return values


_NAMED_CALL = re.compile(r"^\W{0,3}\[([^\]\s]{1,200})\]")


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname).1s %(name)s %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, call_id (lines about a call), exc."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self.redact(record.getMessage()),
        }
        call_id = getattr(record, "call_id", None)
        if call_id is None and (named := _NAMED_CALL.match(entry["msg"])):  # an ingress line "= [call-id] ..."
            call_id = named.group(1)
        if call_id is not None:
            entry["call_id"] = call_id
        if record.exc_info:
            entry["exc"] = self.redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def log_format(setting: str, stream: TextIO) -> str:
    """LOG_FORMAT, or when unset: text on a terminal, json otherwise."""
    if setting in ("json", "text"):
        return setting
    return "text" if stream.isatty() else "json"


def setup_logging(settings: Settings, stream: TextIO | None = None) -> Redactor:
    """Configure the root logger for the process; returns the redactor records and webhooks use too."""
    stream = stream or sys.stderr
    redact = Redactor.for_settings(settings)
    handler = logging.StreamHandler(stream)
    fmt = log_format(settings.log_format, stream)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    return redact
