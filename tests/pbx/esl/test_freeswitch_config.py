"""The copy-paste files of freeswitch/: what they tell FreeSWITCH matches what sip-to-ai expects."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from bridge import config
from bridge.pbx.esl.server import REFUSED_VARIABLE
from tests.conftest import make_settings
from tests.fakes.esl import FakeSocketApp
from tests.pbx.esl.test_server import FRAMES, adapter, audio_frames, esl_settings, until

ROOT = Path(__file__).resolve().parents[3] / "freeswitch"


def actions(path: Path) -> list[tuple[str, str]]:
    tree = ET.parse(path)
    return [(a.get("application", ""), a.get("data", "")) for a in tree.iter("action")]


def socket_argument() -> tuple[str, set[str]]:
    [data] = [d for app, d in actions(ROOT / "socket-to-adapter.xml") if app == "socket"]
    target, *flags = data.split()
    return target, set(flags)


def test_socket_extension_shape():
    steps = actions(ROOT / "socket-to-adapter.xml")
    apps = [app for app, _ in steps]
    target, flags = socket_argument()
    assert flags == {"async", "full"}  # linger and api need `full`; `async` gives +OK at once
    assert config._hostport(target) == ("127.0.0.1", 8084)
    assert not any("codec_string" in data for _, data in steps)  # any codec: non-G.711 is forked as L16
    assert "answer" not in apps  # sip-to-ai answers, so a refused call comes back unanswered
    after = steps[apps.index("socket") + 1 :]
    assert any(REFUSED_VARIABLE in data for _, data in after)


async def test_a_call_through_the_socket_argument_of_the_file():
    _, flags = socket_argument()
    async with adapter(esl_settings()) as (core, server), \
            FakeSocketApp(server.address, full="full" in flags, frames=FRAMES[:10]) as fs:
        await until(lambda: fs.media is not None and len(audio_frames(fs.media)) >= 10)
        assert audio_frames(fs.media)[:10] == FRAMES[:10]
        await fs.hangup()
        await until(lambda: not core.calls)


def test_event_socket_conf_matches_the_readme_settings():
    params = {p.get("name"): p.get("value") for p in ET.parse(ROOT / "event_socket.conf.xml").iter("param")}
    settings = readme_settings("bridge")
    assert (params["listen-ip"], int(params["listen-port"])) == settings.esl_inbound
    assert params["password"] == settings.esl_password == make_settings().esl_password  # the documented default
    assert params["apply-inbound-acl"]


def readme_settings(way: str) -> config.Settings:
    """The .env block of the README's section for `way`, loaded as sip-to-ai would."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## The `{way}` way", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    environ = dict(line.strip().split("=", 1) for line in block.splitlines() if "=" in line)
    return config.load(environ=environ, dotenv=None)


def test_readme_env_blocks_load():
    socket_way = readme_settings("socket")
    assert socket_way.esl_listen == config._hostport(socket_argument()[0]) and not socket_way.sip_enabled
    bridge_way = readme_settings("bridge")
    assert bridge_way.esl_inbound == ("127.0.0.1", 8021) and bridge_way.sip_enabled
