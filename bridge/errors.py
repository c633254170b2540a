"""The one error root of sip-to-ai and the per-layer errors.

    BridgeError
    ├── ConfigError          a setting cannot be used (start-up stops with one line naming it)
    ├── ParseError           remote bytes that do not parse; carries a status hint for SIP
    │   └── RtpParseError    one RTP datagram: counted and dropped, never fatal
    ├── AgentError           the AI vendor failed
    │   └── AgentRefused     ... at connect time (bad key, quota, unknown model): the call is refused
    └── NoPortAvailable      the RTP port range is exhausted
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error sip-to-ai raises on purpose."""


class ConfigError(BridgeError):
    """A configuration value cannot be used; the message names the variable."""


class ParseError(BridgeError):
    """Remote input that does not parse.

    Args:
        message: what is wrong.
        status_hint: the SIP status to answer with where an answer can be built (400, 413, 416, ...).
    """

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class RtpParseError(ParseError):
    """A datagram that is not a valid RTP packet."""


class AgentError(BridgeError):
    """The AI agent failed during a call."""


class AgentRefused(AgentError):
    """The AI vendor refused the session at connect time (bad key, quota, unknown model)."""


class NoPortAvailable(BridgeError):
    """Every RTP port of the configured range is in use."""
