"""Settings: built once at start-up from the environment and `.env`, validated, secrets redacted.

Every setting is one dataclass field whose metadata names its variable; adding a setting is one line.
A value that cannot be used raises ConfigError with one line naming the variable and what is wrong.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.errors import ConfigError

VENDORS = ("echo", "openai", "azure", "deepgram", "gemini", "grok")


def _bool(v: str) -> bool:
    low = v.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {v!r}")


def _port(v: str) -> int:
    n = int(v)
    if not 0 <= n <= 65535:
        raise ValueError(f"port {n} outside 0-65535")
    return n


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(v: str) -> Any:
        n = kind(v)
        if n < 0:
            raise ValueError(f"must not be negative, got {v!r}")
        return n

    return parse


def _at_least_one(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError(f"must be at least 1, got {v!r}")
    return n


def _between(low: int, high: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        n = int(v)
        if not low <= n <= high:
            raise ValueError(f"expected {low}-{high}, got {v!r}")
        return n

    return parse


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda v: kind(v) if v.strip() else None


def _choice(*options: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        low = v.strip().lower()
        if low not in options:
            raise ValueError(f"expected one of {', '.join(o for o in options if o)}, got {v!r}")
        return low

    return parse


def _cidrs(v: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in v.split(",") if p.strip())


def allowed(host: str, networks: tuple) -> bool:
    """Whether `host` (an IP address, IPv6 scope allowed) lies in one of `networks` (a *_ALLOWED_CIDRS value)."""
    address = ipaddress.ip_address(host.split("%")[0])
    return any(address in net for net in networks)


def _list(v: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in v.split(",") if p.strip())


def _hostport(v: str) -> tuple[str, int] | None:
    if not v.strip():
        return None
    host, sep, port = v.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {v!r}")
    return host.strip("[]"), _port(port)


def _listen(v: str) -> tuple[str, int] | None:
    return None if v.strip().lower() in ("off", "") else _hostport(v)


def _env(name: str, default: Any, parse: Callable[[str], Any] = str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class AgentPrompt:
    """The agent's prompt file (`AGENT_PROMPT_FILE`): instructions, greeting, optional voice and tools."""

    instructions: str = "You are a helpful voice assistant on a phone call. Keep answers short."
    greeting: str = ""
    voice: str = ""
    tools: tuple[Mapping[str, Any], ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """All settings of one process. Build with `load()`; never mutate."""

    ai_vendor: str = _env("AI_VENDOR", "echo", _choice(*VENDORS))
    agent_prompt_file: str = _env("AGENT_PROMPT_FILE", "")
    log_level: str = _env("LOG_LEVEL", "INFO", _choice("debug", "info", "warning", "error"))
    log_format: str = _env("LOG_FORMAT", "", _choice("json", "text", ""))  # empty: text on a terminal, else json
    event_loop: str = _env("EVENT_LOOP", "auto", _choice("auto", "asyncio", "uvloop"))  # auto: uvloop if installed
    instance: int | None = _env("SIP_TO_AI_INSTANCE", None, _optional(_positive(int)))  # see for_instance()
    realtime_priority: int = _env("REALTIME_PRIORITY", 0, _between(0, 99))  # SCHED_RR priority; 0: normal

    # media core
    rtp_port_min: int = _env("RTP_PORT_MIN", 10000, _port)
    rtp_port_max: int = _env("RTP_PORT_MAX", 20000, _port)
    media_address: str = _env("MEDIA_ADDRESS", "", str)  # RTP bind/advertise address; default SIP_DOMAIN
    max_calls: int = _env("MAX_CALLS", 100, _positive(int))
    echo_delay_ms: int = _env("ECHO_DELAY_MS", 200, _positive(int))
    playout_max_seconds: float = _env("PLAYOUT_MAX_SECONDS", 180.0, _positive(float))
    uplink_buf_frames: int = _env("UPLINK_BUF_FRAMES", 100, _positive(int))
    downlink_buf_frames: int = _env("DOWNLINK_BUF_FRAMES", 200, _positive(int))
    drain_seconds: float = _env("SHUTDOWN_DRAIN_SEC", 10.0, _positive(float))
    rtp_timeout_sec: float = _env("RTP_TIMEOUT_SEC", 30.0, _positive(float))  # caller media silent: hang up; 0 never
    rtp_hold_timeout_sec: float = _env("RTP_HOLD_TIMEOUT_SEC", 600.0, _positive(float))  # the same while on hold

    # operations: admin endpoint, per-call records, webhooks
    admin_listen: tuple[str, int] | None = _env("ADMIN_LISTEN", ("127.0.0.1", 8090), _listen)
    call_records_dir: str = _env("CALL_RECORDS_DIR", "")
    call_records: str = _env("CALL_RECORDS", "all", _choice("summary", "audio", "all"))
    events_webhook_url: str = _env("EVENTS_WEBHOOK_URL", "")
    events_webhook_secret: str = _env("EVENTS_WEBHOOK_SECRET", "", secret=True)

    # SIP responder
    sip_enabled: bool = _env("SIP_ENABLED", True, _bool)
    sip_domain: str = _env("SIP_DOMAIN", "127.0.0.1")
    sip_port: int = _env("SIP_PORT", 6060, _port)
    sip_transport_type: str = _env("SIP_TRANSPORT_TYPE", "udp", _choice("udp", "tcp", "both"))
    sip_allowed_cidrs: tuple = _env("SIP_ALLOWED_CIDRS", _cidrs("127.0.0.0/8,::1/128"), _cidrs)
    sip_ringing: bool = _env("SIP_RINGING", False, _bool)
    sip_transfer_mode: str = _env("SIP_TRANSFER_MODE", "refer", _choice("refer", "bye"))
    sip_force_rport: bool = _env("SIP_FORCE_RPORT", False, _bool)  # answer to the source port as if Via had rport
    sip_session_min_se: int = _env("SIP_SESSION_MIN_SE", 90, _at_least_one)  # RFC 4028 Min-SE, seconds

    # transfer defaults shared by the ingresses
    transfer_context: str = _env("TRANSFER_CONTEXT", "default")
    transfer_extension: str = _env("TRANSFER_EXTENSION", "")

    # Asterisk ARI
    ari_url: str = _env("ARI_URL", "")
    ari_username: str = _env("ARI_USERNAME", "")
    ari_password: str = _env("ARI_PASSWORD", "", secret=True)
    ari_app: str = _env("ARI_APP", "sip-to-ai")
    ari_format: str = _env("ARI_FORMAT", "ulaw", _choice("ulaw", "alaw", "slin16"))
    ari_variables: tuple = _env("ARI_VARIABLES", (), _list)
    ari_transfer_mode: str = _env("ARI_TRANSFER_MODE", "continue", _choice("continue", "redirect"))
    ari_media: str = _env("ARI_MEDIA", "rtp", _choice("rtp", "audiosocket", "websocket"))  # ExternalMedia kind
    ari_websocket_client: str = _env("ARI_WEBSOCKET_CLIENT", "sip-to-ai")  # websocket_client.conf section

    # Asterisk AudioSocket (app_audiosocket, chan_audiosocket, ExternalMedia encapsulation=audiosocket)
    audiosocket_listen: tuple[str, int] | None = _env("AUDIOSOCKET_LISTEN", None, _hostport)
    audiosocket_allowed_cidrs: tuple = _env("AUDIOSOCKET_ALLOWED_CIDRS", _cidrs("127.0.0.0/8,::1/128"), _cidrs)

    # Asterisk chan_websocket (Dial(WebSocket/...), ExternalMedia transport=websocket): Asterisk connects to us
    websocket_listen: tuple[str, int] | None = _env("WEBSOCKET_LISTEN", None, _hostport)
    websocket_allowed_cidrs: tuple = _env("WEBSOCKET_ALLOWED_CIDRS", _cidrs("127.0.0.0/8,::1/128"), _cidrs)

    # FreeSWITCH ESL
    esl_listen: tuple[str, int] | None = _env("ESL_LISTEN", None, _hostport)
    esl_inbound: tuple[str, int] | None = _env("ESL_INBOUND", None, _hostport)
    esl_password: str = _env("ESL_PASSWORD", "ClueCon", secret=True)
    esl_variables: tuple = _env("ESL_VARIABLES", (), _list)
    esl_allowed_cidrs: tuple = _env("ESL_ALLOWED_CIDRS", _cidrs("127.0.0.0/8,::1/128"), _cidrs)

    # AI vendors
    openai_api_key: str = _env("OPENAI_API_KEY", "", secret=True)
    openai_model: str = _env("OPENAI_MODEL", "gpt-realtime-2.1")
    openai_voice: str = _env("OPENAI_VOICE", "alloy")
    openai_ws_endpoint: str = _env("OPENAI_WS_ENDPOINT", "wss://api.openai.com/v1/realtime")
    openai_project: str = _env("OPENAI_PROJECT", "")
    openai_organization: str = _env("OPENAI_ORGANIZATION", "")
    # "" = the call's own G.711; pcm16 = audio/pcm 24 kHz through the resamplers (PCM-only gateways)
    openai_audio_format: str = _env("OPENAI_AUDIO_FORMAT", "", _choice("", "pcmu", "pcma", "pcm16"))
    openai_noise_reduction: str = _env("OPENAI_NOISE_REDUCTION", "off", _choice("near_field", "far_field", "off"))
    openai_transcription_model: str = _env("OPENAI_TRANSCRIPTION_MODEL", "gpt-4o-mini-transcribe")
    azure_openai_endpoint: str = _env("AZURE_OPENAI_ENDPOINT", "")
    azure_openai_deployment: str = _env("AZURE_OPENAI_DEPLOYMENT", "")
    azure_openai_api_key: str = _env("AZURE_OPENAI_API_KEY", "", secret=True)
    azure_openai_transcription_deployment: str = _env("AZURE_OPENAI_TRANSCRIPTION_DEPLOYMENT", "")
    deepgram_api_key: str = _env("DEEPGRAM_API_KEY", "", secret=True)
    deepgram_listen_model: str = _env("DEEPGRAM_LISTEN_MODEL", "nova-2")
    deepgram_speak_model: str = _env("DEEPGRAM_SPEAK_MODEL", "aura-asteria-en")
    deepgram_llm_model: str = _env("DEEPGRAM_LLM_MODEL", "gpt-4o-mini")
    deepgram_ws_endpoint: str = _env("DEEPGRAM_WS_ENDPOINT", "wss://agent.deepgram.com/v1/agent/converse")
    gemini_api_key: str = _env("GEMINI_API_KEY", "", secret=True)
    gemini_model: str = _env("GEMINI_MODEL", "gemini-3.8-live")
    gemini_voice: str = _env("GEMINI_VOICE", "Puck")
    gemini_greeting: str = _env("GEMINI_GREETING", "client_content", _choice("client_content", "realtime_text"))
    gemini_ws_endpoint: str = _env(
        "GEMINI_WS_ENDPOINT",
        "wss://generativelanguage.googleapis.com/ws/"
        "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
    )
    xai_api_key: str = _env("XAI_API_KEY", "", secret=True)
    grok_model: str = _env("GROK_MODEL", "grok-voice-think-fast-2.0")
    grok_voice: str = _env("GROK_VOICE", "eve")
    grok_ws_endpoint: str = _env("GROK_WS_ENDPOINT", "wss://api.x.ai/v1/realtime")
    max_reconnect_attempts: int = _env("MAX_RECONNECT_ATTEMPTS", 3, _positive(int))
    reconnect_delay_sec: float = _env("RECONNECT_DELAY_SEC", 5.0, _positive(float))
    ai_connection_timeout_sec: float = _env("AI_CONNECTION_TIMEOUT_SEC", 10.0, _positive(float))

    prompt: AgentPrompt = field(default_factory=AgentPrompt)

    @property
    def media_host(self) -> str:
        """The address RTP sockets bind to and that signalling advertises."""
        host = self.media_address or self.sip_domain
        return "127.0.0.1" if host == "localhost" else host

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"


# Old names the original design accepted for the same setting.
ALIASES = {"OPENAI_PROJECT": "OPENAI_PROJECT_ID", "OPENAI_ORGANIZATION": "OPENAI_ORG_ID"}


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file (KEY=VALUE lines, `#` comments, optional quotes, optional `export`)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def load_prompt(path: str) -> AgentPrompt:
    """Read `agent_prompt.yaml`: `instructions` (required), `greeting`, `voice`, `tools`, `metadata`."""
    where = f"AGENT_PROMPT_FILE={path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("instructions"), str):
        raise ConfigError(f"{where}: needs a mapping with a string 'instructions'")
    tools = data.get("tools") or ()
    if not isinstance(tools, list | tuple) or not all(isinstance(t, dict) for t in tools):
        raise ConfigError(f"{where}: 'tools' must be a list of mappings")
    return AgentPrompt(
        instructions=data["instructions"],
        greeting=str(data.get("greeting") or ""),
        voice=str(data.get("voice") or ""),
        tools=tuple(tools),
        metadata=dict(data.get("metadata") or {}),
    )


def load(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
    """Build the settings: the process environment wins over `.env` (python-dotenv semantics).

    Raises:
        ConfigError: one line naming the variable and what is wrong.
    """
    env = dict(read_dotenv(dotenv)) if dotenv is not None and dotenv.is_file() else {}
    env.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = f.metadata.get("env")
        if name is None:
            continue
        raw = env.get(name, env.get(ALIASES.get(name, ""), None))
        if raw is None or (raw.strip() == "" and f.default not in ("", None)):
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            shown = "***" if f.metadata["secret"] else repr(raw)
            detail = "" if f.metadata["secret"] else f": {exc}"
            raise ConfigError(f"{name}={shown} is not valid{detail}") from None
    settings = Settings(**values)
    if settings.agent_prompt_file:
        settings = dataclasses.replace(settings, prompt=load_prompt(settings.agent_prompt_file))
    settings = for_instance(settings)
    _check(settings)
    return settings


# What SIP_TO_AI_INSTANCE=N offsets, so that N processes run from one configuration without clashes: each field
# named here (a port, or a (host, port) pair; None stays None) gets + N; call records go to
# CALL_RECORDS_DIR/instance-N. RTP ports need no offset: every instance binds from the same
# RTP_PORT_MIN..MAX range and skips a port another process already holds.
INSTANCE_PORTS = ("sip_port", "esl_listen", "admin_listen")


def for_instance(s: Settings) -> Settings:
    """The settings of instance `s.instance`: ports offset by N, Stasis app `<ARI_APP>-N`, records in instance-N."""
    n = s.instance
    if n is None:
        return s
    changes: dict[str, Any] = {"ari_app": f"{s.ari_app}-{n}"}
    if s.call_records_dir:
        changes["call_records_dir"] = str(Path(s.call_records_dir) / f"instance-{n}")
    for name in INSTANCE_PORTS:
        value = getattr(s, name)
        port = value[1] if isinstance(value, tuple) else value
        if value is None or port == 0:  # 0: an ephemeral port is unique already
            continue
        if port + n > 65535:
            env = next(f.metadata["env"] for f in dataclasses.fields(Settings) if f.name == name)
            raise ConfigError(f"SIP_TO_AI_INSTANCE={n} is not valid: {env} {port} + {n} is above 65535")
        changes[name] = (value[0], port + n) if isinstance(value, tuple) else port + n
    return dataclasses.replace(s, **changes)


def _check(s: Settings) -> None:
    if s.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError("EVENT_LOOP=uvloop is not valid: uvloop is not installed (pip install 'sip-to-ai[uvloop]')")
    if s.rtp_port_min > s.rtp_port_max:
        raise ConfigError(f"RTP_PORT_MIN={s.rtp_port_min} is above RTP_PORT_MAX={s.rtp_port_max}")
    needs = {
        "openai": ("OPENAI_API_KEY", s.openai_api_key),
        "azure": ("AZURE_OPENAI_API_KEY", s.azure_openai_api_key),
        "deepgram": ("DEEPGRAM_API_KEY", s.deepgram_api_key),
        "gemini": ("GEMINI_API_KEY", s.gemini_api_key),
        "grok": ("XAI_API_KEY", s.xai_api_key),
    }
    if s.ai_vendor in needs and not needs[s.ai_vendor][1]:
        raise ConfigError(f"{needs[s.ai_vendor][0]} is required when AI_VENDOR={s.ai_vendor}")
    if s.ai_vendor == "azure" and not (s.azure_openai_endpoint and s.azure_openai_deployment):
        raise ConfigError("AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT are required when AI_VENDOR=azure")
    if s.events_webhook_url and not s.events_webhook_url.startswith(("http://", "https://")):
        raise ConfigError("EVENTS_WEBHOOK_URL is not valid: expected http(s)://host/path")
    if s.ari_url and not s.ari_url.startswith(("http://", "https://")):
        raise ConfigError(f"ARI_URL={s.ari_url!r} is not valid: expected http://host:port")
    needs_listener = {"audiosocket": ("AUDIOSOCKET_LISTEN", s.audiosocket_listen),
                      "websocket": ("WEBSOCKET_LISTEN", s.websocket_listen)}
    if s.ari_url and s.ari_media in needs_listener and needs_listener[s.ari_media][1] is None:
        raise ConfigError(f"ARI_MEDIA={s.ari_media} needs {needs_listener[s.ari_media][0]}: Asterisk connects there")
    if s.ari_url and s.ari_format == "slin16":  # Asterisk drops slin16 (PT 118) sent back over ExternalMedia RTP
        raise ConfigError("ARI_FORMAT=slin16 is not supported over ExternalMedia RTP (one-way): use ulaw or alaw")
