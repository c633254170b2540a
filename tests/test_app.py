"""The process wiring: which ingresses the settings switch on, and what they are handed."""

from __future__ import annotations

from bridge import app
from bridge.pbx.esl.inbound import EslInboundControl
from tests.conftest import make_settings


def test_the_sip_ingress_is_handed_the_esl_inbound_control_as_its_leg_transfer():
    wiring = dict(app.ingresses(make_settings(esl_inbound=("127.0.0.1", 8021))))
    assert set(wiring) == {"sip", "esl-inbound"}
    assert isinstance(wiring["sip"].keywords["leg_transfer"], EslInboundControl)  # type: ignore[attr-defined]


def test_without_esl_inbound_sip_transfers_by_its_own_signalling():
    wiring = dict(app.ingresses(make_settings()))
    assert set(wiring) == {"sip"}
    assert wiring["sip"].keywords["leg_transfer"] is None  # type: ignore[attr-defined]
