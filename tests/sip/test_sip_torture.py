"""RFC 4475 torture messages (../shared/sip-torture): parsed, answered as its README says, never fatal.

Where the README and RFC 4475 differ, both answers are accepted and the reason is noted: novelsc (the RFC's
416 for an unknown scheme, the README's 505/400), unksm2 (a REGISTER to a non-registrar: 405 comes first),
baddate (RFC 4475 §3.1.2.14: an element may ignore the Date header and process the INVITE).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.sip import grammar, message
from bridge.sip.message import Request, Response
from bridge.sip.uas import Uas, UasConfig
from tests.sip.sip_live import RawClient, live_server, status_of

TORTURE = Path(__file__).resolve().parents[3] / "shared" / "sip-torture"
if not TORTURE.is_dir():
    TORTURE = Path("/work/shared/sip-torture")

CALL = "call"  # a valid INVITE: 100 Trying (in memory, no agent), then 200 OK from the echo agent (live)
EXPECTED: dict[str, set[int | str | None]] = {
    # 3.1.1 valid
    "wsinv": {481}, "intmeth": {405}, "esc01": {CALL}, "escnull": {405}, "esc02": {405}, "lwsdisp": {200},
    "longreq": {CALL}, "dblreq": {405}, "semiuri": {200}, "transports": {200}, "mpart01": {405},
    "unreason": {None}, "noreason": {None},
    # 3.1.2 invalid
    "badinv01": {400}, "clerr": {400}, "ncl": {400}, "scalar02": {400}, "scalarlg": {None}, "quotbal": {400},
    "ltgtruri": {400}, "lwsruri": {400}, "lwsstart": {400}, "trws": {400}, "escruri": {400},
    "baddate": {400, CALL}, "regbadct": {400, 405}, "badaspec": {400}, "baddn": {400}, "badvers": {505},
    "mismatch01": {400}, "mismatch02": {400}, "bigcode": {None},
    # 3.2 transaction layer
    "badbranch": {200},
    # 3.3 application layer
    "insuf": {400}, "unkscm": {416}, "novelsc": {416, 505, 400}, "unksm2": {416, 400, 405}, "bext01": {420},
    "invut": {415}, "regaut01": {405, 501}, "multi01": {400}, "mcl01": {400}, "bcast": {None},
    "zeromf": {200, 483}, "cparam01": {405, 501}, "cparam02": {405, 501}, "regescrt": {405, 501},
    "sdp01": {406},
    # 3.4 backward compatibility
    "inv2543": {CALL},
}
VALID = ["wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri", "transports",
         "mpart01", "unreason", "noreason"]


def load(name: str) -> bytes:
    return (TORTURE / f"{name}.dat").read_bytes()


def test_every_file_has_an_expectation():
    assert sorted(p.stem for p in TORTURE.glob("*.dat")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", VALID)
def test_valid_messages_parse(name):
    msg = message.parse(load(name))
    assert msg.get("call-id")
    assert msg.vias()


def test_valid_fields():
    """RFC 4475 §3.1.1: the fields a parser must get right."""
    wsinv = message.parse(load("wsinv"))
    assert isinstance(wsinv, Request) and wsinv.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert wsinv.cseq() == (9, "INVITE") and wsinv.get("max-forwards") == "0068"
    assert [v.host for v in wsinv.vias()] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert [v.branch for v in wsinv.vias()] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert wsinv.name_addr("to").tag == "1918181833n"
    assert wsinv.name_addr("from").display == 'J Rosenberg \\"' and wsinv.name_addr("from").tag == "98asjd8"
    assert wsinv.get("newfangledheader") == "newfangled value continued newfangled value"
    assert len(wsinv.body) == 150
    intmeth = message.parse(load("intmeth"))
    assert intmeth.method == "!interesting-Method0123456789_*+`.%indeed'~" and intmeth.cseq()[0] == 139122385
    esc01 = message.parse(load("esc01"))
    assert grammar.uri_user(esc01.name_addr("to").uri) == "user"
    assert grammar.uri_user(esc01.name_addr("from").uri) == "I have spaces"
    assert len(message.parse(load("escnull")).values("contact")) == 2
    esc02 = message.parse(load("esc02"))
    assert esc02.method == "RE%47IST%45R" and len(esc02.values("contact")) == 2  # C%6Fntact is another header
    assert message.parse(load("lwsdisp")).name_addr("from").display == "caller"
    dblreq = message.parse(load("dblreq"))
    assert dblreq.method == "REGISTER" and dblreq.body == b""  # the second request in the datagram is ignored
    semiuri = message.parse(load("semiuri"))
    assert grammar.uri_user(semiuri.uri) == "user;par=u@example.net"
    assert [v.transport for v in message.parse(load("transports")).vias()] == ["UDP", "SCTP", "TLS", "UNKNOWN",
                                                                                "TCP"]
    mpart = message.parse(load("mpart01"))
    assert mpart.get("content-type").startswith("multipart/mixed") and len(mpart.body) == 553
    unreason = message.parse(load("unreason"))
    assert isinstance(unreason, Response) and unreason.status == 200 and unreason.reason.startswith("= 2**3 * 5**2")
    noreason = message.parse(load("noreason"))
    assert isinstance(noreason, Response) and noreason.status == 100 and noreason.reason == ""
    assert len(message.parse(load("longreq")).get("to")) > 300


def _first_answer(out: list[tuple[bytes, tuple[str, int]]]) -> int | None:
    for data, _ in out:
        status = int(data.split(b" ", 2)[1])
        if status >= 200 or status == 100:
            return status
    return None


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("chunking", ["whole", "bytewise-prefixes"])
def test_uas_answers_as_expected(name, chunking):
    """In memory: the UAS answers each message as expected; truncated copies never raise."""
    uas = Uas(UasConfig("127.0.0.1", 5060))
    data = load(name)
    if chunking == "bytewise-prefixes":
        for n in range(0, len(data), 7):
            uas.receive(data[:n], ("127.0.0.1", 40000), 0.0)  # every partial datagram is answered or dropped
        uas.datagrams()
        uas = Uas(UasConfig("127.0.0.1", 5060))
    uas.receive(data, ("127.0.0.1", 40000), 0.0)
    status = _first_answer(uas.datagrams())
    assert status in {100 if s == CALL else s for s in EXPECTED[name]}


async def test_live_responder_survives_every_message():
    """Each file to a live responder: the expected answer (or none), and OPTIONS still answered after it."""
    async with live_server(sip_force_rport=True) as server:
        results: dict[str, int | None] = {}
        for name in sorted(EXPECTED):
            client = await RawClient.open()
            try:
                client.send(load(name), server.address)
                wait = 3.0 if CALL in EXPECTED[name] else 0.4
                final = await client.final(wait)
                results[name] = status_of(final)
                client.options(server.address)
                probe = await client.final(2.0)
                while probe is not None and not (isinstance(probe, Response) and probe.cseq()[1] == "OPTIONS"):
                    probe = await client.final(2.0)
                assert status_of(probe) == 200, f"no OPTIONS answer after {name}"
            finally:
                client.close()
        wrong = {n: s for n, s in results.items() if s not in {200 if e == CALL else e for e in EXPECTED[n]}}
        assert not wrong, wrong
        assert server.uas is not None and server.uas.stats["received"] >= len(EXPECTED)


def test_mutated_torture_messages_only_ever_raise_parse_errors():
    """h11's fuzz invariant: garbage either parses or raises SipParseError; the UAS never raises at all."""
    import random

    rng = random.Random(4475)
    corpus = [load(name) for name in sorted(EXPECTED)]
    uas = Uas(UasConfig("127.0.0.1", 5060))
    for i in range(3000):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 8)):
            op, pos = rng.randrange(4), rng.randrange(len(data) or 1)
            if op == 0 and data:
                data[pos % len(data)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = rng.choice([b"\r\n", b":", b";", b",", b"<", b">", b'"', b" ", b"\r\n "])
            elif op == 2:
                del data[pos:pos + rng.randint(1, 20)]
            else:
                data = data[:pos]
        try:
            message.parse(bytes(data))
        except message.SipParseError:
            pass
        uas.receive(bytes(data), ("127.0.0.1", 40000 + i % 100), float(i))
        uas.handle_timer(float(i))
        uas.datagrams()
        uas.events()


async def test_live_broken_messages_are_answered_400_or_dropped_and_options_still_work():
    """The parser's broken cases (missing headers, bad Content-Length, bad start line, non-UTF-8, huge) live."""
    from tests.sip.test_sip_message import INVITE

    broken = [
        (INVITE.replace(b"i: a84b4c76e66710\r\n", b""), {400}),
        (INVITE.replace(b"l: 4", b"l: 400"), {400}),
        (INVITE.replace(b"INVITE sip:bob@example.com SIP/2.0", b"INVITE  sip:bob@example.com SIP/2.0"), {400}),
        (INVITE.replace(b"X-Customer-Id: 42", b"X-Customer-Id: \xff\xfe"), {400}),
        (INVITE.replace(b"X-Customer-Id: 42", b"X-Customer-Id: " + b"a" * 9000), {400}),
        (INVITE.replace(b"X-Customer-Id: 42\r\n", b"X-A: 1\r\n" * 300), {400}),
        (b"\x00\x01garbage\r\n\r\n", {None}),
        (INVITE.split(b"\r\nv: ")[0] + b"\r\n\r\n", {None}),  # no Via: nowhere to answer
    ]
    async with live_server(sip_force_rport=True) as server:
        for data, expected in broken:
            client = await RawClient.open()
            try:
                client.send(data, server.address)
                assert status_of(await client.final(0.4)) in expected, data[:80]
                client.options(server.address)
                probe = await client.final(2.0)
                assert status_of(probe) == 200
            finally:
                client.close()
