"""Settings: original names and defaults, .env semantics, one-line errors naming the variable, secrets redacted."""

import socket
import subprocess
import sys

import pytest

from bridge import config
from bridge.errors import ConfigError


def test_defaults_run_the_echo_agent_on_6060():
    s = config.load(environ={}, dotenv=None)
    assert (s.ai_vendor, s.sip_port, s.sip_transport_type, s.max_reconnect_attempts) == ("echo", 6060, "udp", 3)
    assert (s.reconnect_delay_sec, s.ai_connection_timeout_sec) == (5.0, 10.0)
    assert s.openai_ws_endpoint == "wss://api.openai.com/v1/realtime"


def test_environment_wins_over_dotenv(tmp_path):
    env = tmp_path / ".env"
    env.write_text('# comment\nSIP_PORT=7070\nexport LOG_LEVEL="DEBUG"\nOPENAI_MODEL=from-file # note\n')
    s = config.load(environ={"SIP_PORT": "8080"}, dotenv=env)
    assert (s.sip_port, s.log_level, s.openai_model) == (8080, "debug", "from-file")


def test_original_alias_names_still_work():
    s = config.load(environ={"OPENAI_PROJECT_ID": "proj_1", "OPENAI_ORG_ID": "org_2"}, dotenv=None)
    assert (s.openai_project, s.openai_organization) == ("proj_1", "org_2")


@pytest.mark.parametrize(
    "env, names",
    [
        ({"SIP_PORT": "70000"}, "SIP_PORT"),
        ({"AI_VENDOR": "skynet"}, "AI_VENDOR"),
        ({"SIP_ALLOWED_CIDRS": "10.0.0.0/33"}, "SIP_ALLOWED_CIDRS"),
        ({"AI_VENDOR": "gemini"}, "GEMINI_API_KEY"),
        ({"RTP_PORT_MIN": "20000", "RTP_PORT_MAX": "10000"}, "RTP_PORT_MIN"),
        ({"ESL_LISTEN": "nohostport"}, "ESL_LISTEN"),
        ({"AUDIOSOCKET_LISTEN": "127.0.0.1"}, "AUDIOSOCKET_LISTEN"),
        ({"WEBSOCKET_ALLOWED_CIDRS": "nonsense"}, "WEBSOCKET_ALLOWED_CIDRS"),
        ({"ARI_MEDIA": "sctp"}, "ARI_MEDIA"),
        ({"ARI_URL": "http://127.0.0.1:8088", "ARI_MEDIA": "audiosocket"}, "AUDIOSOCKET_LISTEN"),
        ({"ARI_URL": "http://127.0.0.1:8088", "ARI_MEDIA": "websocket"}, "WEBSOCKET_LISTEN"),
    ],
)
def test_bad_values_name_the_variable(env, names):
    with pytest.raises(ConfigError) as err:
        config.load(environ=env, dotenv=None)
    assert names in str(err.value) and "\n" not in str(err.value)


def test_secrets_never_show(tmp_path):
    s = config.load(environ={"AI_VENDOR": "openai", "OPENAI_API_KEY": "sk-secret-123", "ARI_PASSWORD": "pw-456"},
                    dotenv=None)
    assert "sk-secret-123" not in repr(s) and "pw-456" not in repr(s)
    with pytest.raises(ConfigError) as err:
        config.load(environ={"MAX_RECONNECT_ATTEMPTS": "sk-secret-789"}, dotenv=None)
    assert "MAX_RECONNECT_ATTEMPTS" in str(err.value)


def test_prompt_file(tmp_path):
    good = tmp_path / "p.yaml"
    good.write_text("instructions: be brief\ngreeting: Hello\nvoice: alloy\n")
    s = config.load(environ={"AGENT_PROMPT_FILE": str(good)}, dotenv=None)
    assert (s.prompt.instructions, s.prompt.greeting, s.prompt.voice) == ("be brief", "Hello", "alloy")
    bad = tmp_path / "bad.yaml"
    bad.write_text("greeting: no instructions\n")
    with pytest.raises(ConfigError, match="AGENT_PROMPT_FILE"):
        config.load(environ={"AGENT_PROMPT_FILE": str(bad)}, dotenv=None)


def test_the_command_fails_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bridge", "check-config"], cwd=tmp_path, capture_output=True,
                         text=True, env={"SIP_PORT": "x", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "SIP_PORT" in out.stderr


def test_stream_ingresses_are_off_by_default_and_loopback_only_when_on():
    s = config.load(environ={}, dotenv=None)
    assert (s.audiosocket_listen, s.websocket_listen, s.ari_media) == (None, None, "rtp")
    s = config.load(environ={"AUDIOSOCKET_LISTEN": "0.0.0.0:9093", "WEBSOCKET_LISTEN": "[::]:8765"}, dotenv=None)
    assert (s.audiosocket_listen, s.websocket_listen) == (("0.0.0.0", 9093), ("::", 8765))
    assert config.allowed("127.0.0.1", s.audiosocket_allowed_cidrs)
    assert not config.allowed("192.0.2.7", s.websocket_allowed_cidrs)


def test_event_loop_uvloop_without_uvloop_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="^EVENT_LOOP=uvloop is not valid"):
        config.load(environ={"EVENT_LOOP": "uvloop"}, dotenv=None)


def test_event_loop_choice():
    from bridge.app import loop_factory

    assert loop_factory(config.load(environ={"EVENT_LOOP": "asyncio"}, dotenv=None)) is None
    uvloop = pytest.importorskip("uvloop")
    for choice in ("auto", "uvloop"):
        assert loop_factory(config.load(environ={"EVENT_LOOP": choice}, dotenv=None)) is uvloop.new_event_loop


def test_an_instance_number_offsets_the_ports_and_names_its_stasis_app():
    env = {"SIP_PORT": "5080", "ESL_LISTEN": "0.0.0.0:8084", "ARI_APP": "ai", "CALL_RECORDS_DIR": "/var/rec"}
    lone = config.load(environ=env, dotenv=None)
    assert (lone.instance, lone.sip_port, lone.esl_listen, lone.ari_app) == (None, 5080, ("0.0.0.0", 8084), "ai")
    assert (lone.admin_listen, lone.call_records_dir) == (("127.0.0.1", 8090), "/var/rec")
    for n in (0, 3):
        s = config.load(environ={**env, "SIP_TO_AI_INSTANCE": str(n)}, dotenv=None)
        assert (s.instance, s.sip_port, s.esl_listen, s.ari_app) == (n, 5080 + n, ("0.0.0.0", 8084 + n), f"ai-{n}")
        assert (s.admin_listen, s.call_records_dir) == (("127.0.0.1", 8090 + n), f"/var/rec/instance-{n}")
        assert (s.rtp_port_min, s.rtp_port_max) == (lone.rtp_port_min, lone.rtp_port_max)  # shared, see INSTANCE_PORTS
    assert config.load(environ={"SIP_TO_AI_INSTANCE": ""}, dotenv=None).instance is None
    with pytest.raises(ConfigError, match="^SIP_TO_AI_INSTANCE='-1' is not valid"):
        config.load(environ={"SIP_TO_AI_INSTANCE": "-1"}, dotenv=None)
    with pytest.raises(ConfigError, match="^SIP_TO_AI_INSTANCE=9 is not valid: SIP_PORT 65530 "):
        config.load(environ={"SIP_TO_AI_INSTANCE": "9", "SIP_PORT": "65530"}, dotenv=None)


def test_realtime_priority_is_applied_or_warned_about():
    with pytest.raises(ConfigError, match="^REALTIME_PRIORITY='100' is not valid"):
        config.load(environ={"REALTIME_PRIORITY": "100"}, dotenv=None)
    code = ("import os; from bridge.app import realtime_priority; line = realtime_priority(7); "
            "print(os.sched_getscheduler(0) == os.SCHED_RR, os.sched_getparam(0).sched_priority, line)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout.split(" ", 2)
    if out[0] == "True":  # allowed here (root or CAP_SYS_NICE)
        assert out[1] == "7" and out[2].startswith("scheduling: SCHED_RR priority 7")
    else:
        assert out[2].startswith("WARNING: REALTIME_PRIORITY=7 not applied")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_port_in_use_stops_serve_with_one_line(tmp_path, loop):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        env = {"PATH": "/usr/bin:/bin", "SIP_PORT": str(held.getsockname()[1]), "ADMIN_LISTEN": "off",
               "EVENT_LOOP": loop}
        out = subprocess.run([sys.executable, "-m", "bridge", "serve"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=20)
    not_log = [line for line in out.stderr.splitlines() if not line.startswith("{")]  # log lines are JSON here
    assert out.returncode == 2 and len(not_log) == 1 and not_log[0].startswith("sip-to-ai: cannot listen:"), not_log
