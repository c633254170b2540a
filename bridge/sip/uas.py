"""The SIP UAS core, sans-I/O: receive(data, addr, now) -> events() and datagrams(); next_deadline()/handle_timer(now).

The transport feeds datagrams in and sends what comes out; the call layer answers IncomingCall with answer() or
reject() and ends calls with hangup() or refer(). Every request is answered where RFC 3261 says (§8.2, §17.2,
§18.2.2 with RFC 3581 rport); a message that cannot be parsed gets 400 when a Via routes it back, else it is dropped.
Session timers (RFC 4028, bridge/sip/timer.py) are deadlines like the transactions' timers: when we refresh, the
refresh goes out from handle_timer(); when the caller refreshes and stops, the call ends there with CallEnded + BYE.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from bridge.errors import ParseError
from bridge.media import Address
from bridge.sip import grammar as g
from bridge.sip import message, sdp
from bridge.sip import timer as session_timer
from bridge.sip.dialog import Dialog, Pending2xx, new_tag
from bridge.sip.events import (
    CallCancelled,
    CallEnded,
    CallRefused,
    DtmfReceived,
    Event,
    IncomingCall,
    MediaChanged,
    MediaParams,
    RequestDone,
)
from bridge.sip.message import Request, Response, SipParseError, Via
from bridge.sip.timer import RETRY_FLOOR, SessionTimer, TooBrief
from bridge.sip.transaction import ClientTransaction, ServerTransaction, server_key

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY"
SUPPORTED = "timer"  # the extensions we understand (a Require of anything else gets 420)
SCHEMES = ("sip", "sips", "tel")
ACCEPTED_TYPES = ("application/sdp", "application/*", "*/*")
METADATA_HEADERS = ("p-asserted-identity", "remote-party-id", "diversion", "referred-by", "user-to-user")


@dataclass(frozen=True)
class UasConfig:
    """Where we are (for Via and Contact) and how we behave."""

    host: str
    port: int
    transport: str = "UDP"
    ringing: bool = False  # send 180 Ringing before the answer (SIP_RINGING)
    force_rport: bool = False  # answer to the packet's source, as if every Via had rport (SIP_FORCE_RPORT)
    retry_after: int = 30  # seconds, on 503
    min_se: int = session_timer.MIN_SE  # the shortest session interval we accept (SIP_SESSION_MIN_SE)
    server: str = "sip-to-ai"


class Uas:
    """All dialogs and transactions of one SIP listener."""

    def __init__(self, config: UasConfig) -> None:
        self.config = config
        self.unavailable: str | None = None  # set by the transport: why new calls get 503 now
        self.stats: Counter[str] = Counter()
        self._server: dict[tuple[str, ...], ServerTransaction] = {}
        self._client: dict[str, ClientTransaction] = {}
        self._dialogs: dict[str, Dialog] = {}
        self._events: list[Event] = []
        self._out: list[tuple[bytes, Address]] = []
        self._handlers: dict[str, Callable[[ServerTransaction, float], None]] = {
            "INVITE": self._on_invite, "CANCEL": self._on_cancel, "BYE": self._on_bye,
            "OPTIONS": self._on_options, "UPDATE": self._on_update, "INFO": self._on_info,
            "NOTIFY": self._on_notify,
        }

    # -- the sans-I/O surface ------------------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float, reliable: bool = False) -> None:
        """Feed one datagram (or one framed stream message) that arrived from `source`."""
        self.stats["received"] += 1
        try:
            msg = message.parse(data, stream=reliable)
        except SipParseError as exc:
            self._malformed(exc, source)
            return
        if isinstance(msg, Response):
            self._on_response(msg, now)
        else:
            self._on_request(msg, source, now, reliable)

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def datagrams(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        times = [t.next_deadline() for t in self._server.values()]
        times += [c.next_deadline() for c in self._client.values()]
        times += [min(d.pending_2xx.next_at, d.pending_2xx.give_up) for d in self._dialogs.values() if d.pending_2xx]
        times += [d.timer.due for d in self._dialogs.values() if d.timer is not None and d.state != "early"]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for key, txn in list(self._server.items()):
            if (data := txn.on_timer(now)) is not None:
                self._send(data, txn.dest)
            if txn.expired(now):
                del self._server[key]
        for dialog in list(self._dialogs.values()):
            self._retransmit_2xx(dialog, now)
            self._session_timer(dialog, now)
        for branch, ct in list(self._client.items()):
            was_final = ct.final
            if (data := ct.on_timer(now)) is not None:
                self._send(data, ct.dest)
            if ct.final and not was_final:  # Timer F / B: a local 408
                self._client_done(ct, None, now)
            if ct.done(now):
                del self._client[branch]

    # -- what the call layer does ----------------------------------------------------------------------------

    def answer(self, call_id: str, local_media: Address, now: float) -> bool:
        """200 OK with our SDP; False when the call is gone (cancelled meanwhile)."""
        dialog = self._dialogs.get(call_id)
        txn = self._server.get(dialog.invite_key) if dialog else None
        if dialog is None or txn is None or txn.answered or dialog.state != "early":
            return False
        dialog.local_media = local_media
        body = sdp.build(dialog.negotiated, local_media, dialog.session_id, dialog.sdp_version, dialog.offer_sent)
        dialog.local_sdp = body
        self._answer_2xx(dialog, txn, body, now)
        return True

    def reject(self, call_id: str, status: int, now: float, extra: list[tuple[str, str]] | None = None) -> None:
        """A final error response to a call not yet answered (AgentRefused -> 503)."""
        dialog = self._dialogs.pop(call_id, None)
        txn = self._server.get(dialog.invite_key) if dialog else None
        if dialog and txn and not txn.answered:
            self._reply(txn, status, now, dialog.local_tag, extra)

    def hangup(self, call_id: str, now: float) -> bool:
        """End the call from our side: BYE (after the ACK, §15), or 480 before the answer. False if gone."""
        dialog = self._dialogs.get(call_id)
        if dialog is None:
            return False
        if dialog.state == "early":
            self.reject(call_id, 480, now)
            self._events.append(RequestDone(call_id, "BYE", 480))
        elif dialog.pending_2xx is not None:
            dialog.bye_wanted = True
        else:
            self._bye(dialog, now)
        return True

    def refer(self, call_id: str, target: str, now: float) -> bool:
        """REFER the caller to `target` (RFC 3515); RequestDone tells the outcome. False if not possible now."""
        dialog = self._dialogs.get(call_id)
        if dialog is None or dialog.state != "confirmed":
            return False
        extra = [("refer-to", f"<{target}>"), ("referred-by", f"<{self._contact_uri()}>"),
                 ("contact", f"<{self._contact_uri()}>")]
        self._send_in_dialog(dialog, "REFER", now, extra)
        return True

    def remote_target_host(self, call_id: str) -> str:
        dialog = self._dialogs.get(call_id)
        hp = g.uri_hostport(dialog.remote_target) if dialog else None
        return hp[0] if hp else self.config.host

    def in_dialog(self, call_id: str) -> bool:
        return call_id in self._dialogs

    # -- requests --------------------------------------------------------------------------------------------

    def _on_request(self, req: Request, source: Address, now: float, reliable: bool) -> None:
        dest = self._stamp_via(req, source)
        dest = source if reliable else dest  # §18.2.2: on a stream the response goes back on the connection
        if req.method == "ACK":
            self._on_ack(req, now)
            return
        key = server_key(req)
        if (txn := self._server.get(key)) is not None:
            self.stats["retransmissions"] += 1
            if (data := txn.on_retransmission()) is not None:
                self._send(data, txn.dest)
            return
        txn = ServerTransaction(req, dest, reliable, now)
        self._server[key] = txn
        status, extra = self._precheck(req)
        if status:
            self._reply(txn, status, now, "", extra)
            return
        self._handlers.get(req.method, self._on_unsupported)(txn, now)

    def _precheck(self, req: Request) -> tuple[int, list[tuple[str, str]]]:
        """Checks before any method logic (§8.2.1-§8.2.3): URI scheme, Require, body type, Accept."""
        scheme = req.uri.partition(":")[0].lower()
        if scheme not in SCHEMES:
            return 416, []
        if req.method != "CANCEL":
            unknown = [r for r in req.values("require") if r and r.lower() != SUPPORTED]
            if unknown:
                return 420, [("unsupported", ", ".join(unknown))]
        if req.method in ("INVITE", "UPDATE") and req.body:
            ctype = (req.get("content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/sdp":
                return 415, [("accept", "application/sdp")]
        accept = [a.split(";")[0].strip().lower() for a in req.values("accept")]
        if req.method == "INVITE" and req.get("accept") is not None and not set(accept) & set(ACCEPTED_TYPES):
            return 406, [("accept", "application/sdp")]
        return 0, []

    def _on_invite(self, txn: ServerTransaction, now: float) -> None:
        req = txn.request
        if req.name_addr("to").tag:
            self._on_reinvite(txn, now)
            return
        call_id = req.get("call-id") or ""
        if call_id in self._dialogs:
            self._reply(txn, 482, now)  # a merged request: same call, new branch (§8.2.2.2)
            return
        if self.unavailable:
            self._reply(txn, 503, now, "", [("retry-after", str(self.config.retry_after))])
            self._events.append(CallRefused(call_id, self.unavailable))
            return
        answered, timer = self._negotiate_timer(txn, now, "")
        if answered:
            return
        try:
            neg = sdp.negotiate(sdp.SessionDescription.parse(req.body)) if req.body else sdp.default_offer()
        except ParseError as exc:
            self._reply(txn, exc.status_hint, now, "", [("warning", '304 sip-to-ai "PCMU or PCMA only"')])
            return
        self._send(txn.respond(message.response(req, 100), now), txn.dest)
        dialog = self._new_dialog(req, neg, server_key(req))
        dialog.stream_peer = txn.dest if txn.reliable else None
        dialog.timer = timer  # started by our 2xx
        if self.config.ringing:
            self._reply(txn, 180, now, dialog.local_tag, self._dialog_headers(req))
        self._events.append(IncomingCall(call_id, _user(req.get("from")), g.uri_user(req.uri) or _user(req.get("to")),
                                         _media(neg), _metadata(req)))

    def _new_dialog(self, req: Request, neg: sdp.Negotiated, key: tuple[str, ...]) -> Dialog:
        contact = req.values("contact")
        target = message.NameAddr.parse(contact[0]).uri if contact else req.name_addr("from").uri
        dialog = Dialog(req.get("call-id") or "", new_tag(), req.get("from") or "", req.get("to") or "", target,
                        req.values("record-route"), req.cseq()[0], neg, invite_key=key)
        dialog.offer_sent = not req.body
        dialog.answer_key = _answer_key(neg)
        dialog.peer_update = _allows_update(req)
        self._dialogs[dialog.call_id] = dialog
        return dialog

    def _on_reinvite(self, txn: ServerTransaction, now: float) -> None:
        dialog = self._offer_in_dialog(txn, now)
        if dialog is not None:
            body = self._local_sdp(dialog, txn.request)
            self._answer_2xx(dialog, txn, body, now)

    def _on_update(self, txn: ServerTransaction, now: float) -> None:
        """RFC 3311: with SDP an offer we answer (media follows as for a re-INVITE), without SDP a refresh."""
        dialog = self._offer_in_dialog(txn, now)
        if dialog is not None:
            body = self._local_sdp(dialog, txn.request) if txn.request.body else b""
            extra = [("contact", f"<{self._contact_uri()}>"), ("supported", SUPPORTED)]
            extra += self._timer_started(dialog, now) if dialog.state != "early" else []
            extra += [("content-type", "application/sdp")] if body else []
            self._reply(txn, 200, now, dialog.local_tag, extra, body)

    def _offer_in_dialog(self, txn: ServerTransaction, now: float) -> Dialog | None:
        """re-INVITE/UPDATE checks, the session timer and the new offer (§14.2, RFC 3311 §5.2, RFC 4028 §9).

        None when an error was answered; nothing about the dialog changes then (§12.2.2).
        """
        req = txn.request
        dialog = self._dialog_for(req)
        if dialog is None:
            self._reply(txn, 481, now)
            return None
        cseq = req.cseq()[0]
        invite = req.method == "INVITE"
        if cseq <= dialog.remote_cseq or (invite and dialog.pending_2xx is not None) or (
                req.body and dialog.state == "early"):  # the INVITE's offer is not answered yet (RFC 3311 §5.2)
            self._reply(txn, 500, now, dialog.local_tag, [("retry-after", "1")])
            return None
        if dialog.invite_out and (invite or req.body) or (req.body and dialog.offer_sent):
            self._reply(txn, 491, now, dialog.local_tag)  # glare: our offer is outstanding (§14.2, RFC 3311 §5.2)
            return None
        answered, timer = self._negotiate_timer(txn, now, dialog.local_tag)
        if answered:
            return None
        neg = dialog.negotiated
        if req.body:
            try:
                neg = sdp.negotiate(sdp.SessionDescription.parse(req.body))
            except ParseError as exc:
                self._reply(txn, exc.status_hint, now, dialog.local_tag)
                return None
        dialog.remote_cseq = cseq
        if contact := req.values("contact"):
            dialog.remote_target = message.NameAddr.parse(contact[0]).uri  # target refresh (§12.2.2)
        if req.get("allow") is not None:
            dialog.peer_update = _allows_update(req)
        if dialog.state != "early":  # an early UPDATE refreshes nothing: the timer starts with the 2xx to the INVITE
            dialog.timer = timer
        if req.body:
            dialog.negotiated = neg
            self._events.append(MediaChanged(dialog.call_id, _media(neg)))
        return dialog

    def _negotiate_timer(self, txn: ServerTransaction, now: float, tag: str) -> tuple[bool, SessionTimer | None]:
        """RFC 4028 §9 for an INVITE, re-INVITE or UPDATE: (True, None) when 422 or 400 was answered."""
        try:
            agreed = session_timer.negotiate(txn.request, self.config.min_se)
        except ParseError as exc:
            self._reply(txn, exc.status_hint, now, tag, [("warning", f'399 sip-to-ai "{exc}"')])
            return True, None
        if isinstance(agreed, TooBrief):
            self._reply(txn, 422, now, tag, [("min-se", str(agreed.min_se))])
            return True, None
        return False, agreed

    def _timer_started(self, dialog: Dialog, now: float) -> list[tuple[str, str]]:
        """Our 2xx to an INVITE, re-INVITE or UPDATE (re)starts the session timer: its headers (RFC 4028 §9)."""
        if dialog.timer is None:
            return []
        dialog.timer.start(now)
        return dialog.timer.response_headers()

    def _local_sdp(self, dialog: Dialog, req: Request) -> bytes:
        """Our answer (or, without an offer, our current SDP as an offer); `o=` version bumps only on change."""
        key = _answer_key(dialog.negotiated)
        if key != dialog.answer_key:
            dialog.sdp_version += 1
        dialog.answer_key = key
        dialog.offer_sent = req.method == "INVITE" and not req.body
        local = dialog.local_media or (self.config.host, 9)
        dialog.local_sdp = sdp.build(dialog.negotiated, local, dialog.session_id, dialog.sdp_version, dialog.offer_sent)
        return dialog.local_sdp

    def _on_cancel(self, txn: ServerTransaction, now: float) -> None:
        key = server_key(txn.request)
        invite = self._server.get(key[:-1] + ("INVITE",))
        if invite is None:
            self._reply(txn, 481, now)
            return
        call_id = txn.request.get("call-id") or ""
        dialog = self._dialogs.get(call_id)
        tag = dialog.local_tag if dialog else new_tag()
        self._reply(txn, 200, now, tag)
        if not invite.answered:
            self._dialogs.pop(call_id, None)
            self._reply(invite, 487, now, tag)
            self._events.append(CallCancelled(call_id))

    def _on_bye(self, txn: ServerTransaction, now: float) -> None:
        dialog = self._dialog_for(txn.request)
        if dialog is None:
            self._reply(txn, 481, now)
            return
        self._reply(txn, 200, now, dialog.local_tag)
        invite = self._server.get(dialog.invite_key)
        if invite is not None and not invite.answered:
            self._reply(invite, 487, now, dialog.local_tag)  # §15.1.2
        del self._dialogs[dialog.call_id]
        self._events.append(CallEnded(dialog.call_id, "caller hung up"))

    def _on_options(self, txn: ServerTransaction, now: float) -> None:
        dialog = self._dialog_for(txn.request)
        if txn.request.name_addr("to").tag and dialog is None:
            self._reply(txn, 481, now)
            return
        tag = dialog.local_tag if dialog else ""
        extra = [("allow", ALLOW), ("accept", "application/sdp"), ("supported", SUPPORTED)]
        if self.unavailable and dialog is None:
            self._reply(txn, 503, now, "", extra + [("retry-after", str(self.config.retry_after))])
        else:
            self._reply(txn, 200, now, tag, extra)

    def _on_info(self, txn: ServerTransaction, now: float) -> None:
        dialog = self._dialog_for(txn.request)
        if dialog is None:
            self._reply(txn, 481, now)
            return
        self._reply(txn, 200, now, dialog.local_tag)
        if (txn.request.get("content-type") or "").lower().startswith("application/dtmf-relay"):
            for line in txn.request.body.decode("ascii", "replace").splitlines():
                name, _, value = line.partition("=")
                if name.strip().lower() == "signal" and value.strip():
                    self._events.append(DtmfReceived(dialog.call_id, value.strip()[:1]))

    def _on_notify(self, txn: ServerTransaction, now: float) -> None:
        dialog = self._dialog_for(txn.request)
        self._reply(txn, 200 if dialog else 481, now, dialog.local_tag if dialog else "")

    def _on_unsupported(self, txn: ServerTransaction, now: float) -> None:
        self._reply(txn, 405, now, "", [("allow", ALLOW)])

    def _on_ack(self, req: Request, now: float) -> None:
        invite = self._server.get(server_key(req))
        if invite is not None and invite.final >= 300:
            invite.on_ack(now)  # the ACK of our error response: absorbed by its transaction
            return
        dialog = self._dialog_for(req)
        pending = dialog.pending_2xx if dialog else None
        if dialog is None or pending is None or req.cseq()[0] != pending.cseq:
            self.stats["stray_ack"] += 1
            return
        dialog.pending_2xx, dialog.state = None, "confirmed"
        if dialog.offer_sent and req.body:
            dialog.offer_sent = False
            try:
                dialog.negotiated = sdp.negotiate(sdp.SessionDescription.parse(req.body))
            except ParseError:
                self.stats["bad_ack_sdp"] += 1
            else:
                self._events.append(MediaChanged(dialog.call_id, _media(dialog.negotiated)))
        if dialog.bye_wanted:
            self._bye(dialog, now)

    # -- responses we receive (to our BYE / REFER / session refresh) -----------------------------------------------

    def _on_response(self, resp: Response, now: float) -> None:
        ct = self._client.get(resp.vias()[0].branch)
        if ct is None:
            self.stats["stray_response"] += 1
            return
        if ct.final:  # a final response again: our INVITE's ACK again (§17.1.1.2, §13.2.2.4)
            if ct.ack is not None and resp.status >= 200:
                self._send(ct.ack, ct.dest)
            return
        if ct.on_response(resp, now):
            if ct.ack is not None:
                self._send(ct.ack, ct.dest)
            self._client_done(ct, resp, now)
            if ct.done(now):
                del self._client[ct.branch]

    def _client_done(self, ct: ClientTransaction, resp: Response | None, now: float) -> None:
        """Our request's final response (None: it timed out, 408): the call layer's, or our refresh's."""
        if ct.method not in ("INVITE", "UPDATE"):
            self._events.append(RequestDone(ct.call_id, ct.method, ct.final))
            return
        dialog = self._dialogs.get(ct.call_id)
        if dialog is None:
            return
        if ct.invite:
            dialog.invite_out = False
        if resp is not None and resp.status < 300 and ct.invite:
            ack = dialog.request("ACK", self.config.host, self.config.port, "TCP" if ct.dest == dialog.stream_peer
                                 else "UDP", cseq=ct.request.cseq()[0])
            ct.ack = bytes(ack)
            self._send(ct.ack, ct.dest)
            self._refresh_answer(dialog, resp)
        if dialog.timer is not None:
            self._refresh_done(dialog, dialog.timer, ct, resp, now)

    def _refresh_answer(self, dialog: Dialog, resp: Response) -> None:
        """The 2xx to our re-INVITE answers our unchanged offer: media follows if the caller moved it."""
        try:
            neg = sdp.negotiate(sdp.SessionDescription.parse(resp.body))
        except ParseError:
            self.stats["bad_refresh_answer"] += 1
            return
        if (neg.remote, neg.sending) != (dialog.negotiated.remote, dialog.negotiated.sending):
            dialog.negotiated = dataclasses.replace(dialog.negotiated, remote=neg.remote, direction=neg.direction)
            self._events.append(MediaChanged(dialog.call_id, _media(dialog.negotiated)))

    def _refresh_done(self, dialog: Dialog, timer: SessionTimer, ct: ClientTransaction, resp: Response | None,
                      now: float) -> None:
        """RFC 4028 §7.2-§7.4, §10: a 2xx restarts the interval; 408/481 end the call; others try again."""
        status = ct.final
        if 200 <= status < 300 and resp is not None:
            try:
                timer.answered(resp.get("session-expires"), now)
            except ParseError:
                timer.start(now)
        elif status in (408, 481):
            self._end_session(dialog, f"session refresh ({ct.method}) failed: {status}", now)
        elif status == 422 and resp is not None and self._min_se(resp) > timer.interval:
            timer.interval = self._min_se(resp)  # §7.3: again at once, with the interval asked for
            timer.in_flight, timer.retry_at = False, now
        elif status in (405, 501) and ct.method == "UPDATE":
            dialog.peer_update = False  # the caller does not take UPDATE after all: re-INVITE at once
            timer.in_flight, timer.retry_at = False, now
        else:
            timer.retry(now)

    @staticmethod
    def _min_se(resp: Response) -> int:
        try:
            return session_timer.parse_min_se(resp.get("min-se"))
        except ParseError:
            return 0

    def _session_timer(self, dialog: Dialog, now: float) -> None:
        """Our refresh when due (UPDATE if the caller allows it, else re-INVITE with our SDP); BYE on expiry."""
        timer = dialog.timer
        if timer is None or dialog.state == "early":
            return
        action = timer.action(now)
        if action == "expire":
            self._end_session(dialog, f"session timer expired: no refresh within {timer.interval} s", now)
        elif action == "refresh":
            if dialog.state != "confirmed" or dialog.invite_out or dialog.offer_sent:
                timer.retry_at = now + RETRY_FLOOR  # not while an ACK or an answer is outstanding
                return
            extra = timer.request_headers() + [("contact", f"<{self._contact_uri()}>"), ("allow", ALLOW)]
            timer.in_flight = True
            if dialog.peer_update:
                self._send_in_dialog(dialog, "UPDATE", now, extra)
                return
            dialog.invite_out = True
            self._send_in_dialog(dialog, "INVITE", now, extra + [("content-type", "application/sdp")],
                                 dialog.local_sdp)

    def _end_session(self, dialog: Dialog, reason: str, now: float) -> None:
        """The session is over by RFC 4028: the call ends, the caller gets BYE (after the ACK if it is due)."""
        dialog.timer = None
        self._events.append(CallEnded(dialog.call_id, reason, "session_expired"))
        if dialog.pending_2xx is not None:
            dialog.bye_wanted = True
        else:
            self._bye(dialog, now)

    # -- helpers -------------------------------------------------------------------------------------------

    def _answer_2xx(self, dialog: Dialog, txn: ServerTransaction, body: bytes, now: float) -> None:
        extra = self._dialog_headers(txn.request) + [("allow", ALLOW), ("supported", SUPPORTED)]
        extra += self._timer_started(dialog, now)
        extra += [("content-type", "application/sdp")] if body else []
        resp = message.response(txn.request, 200, dialog.local_tag, extra, body)
        data = txn.respond(resp, now)
        self._send(data, txn.dest)
        dialog.pending_2xx = Pending2xx.start(txn.request.cseq()[0], data, txn.dest, now)
        if dialog.state == "early":
            dialog.state = "confirming"

    def _retransmit_2xx(self, dialog: Dialog, now: float) -> None:
        pending = dialog.pending_2xx
        if pending is None:
            return
        if now >= pending.give_up:  # §13.3.1.4: no ACK after 64·T1: confirm, then end the session with BYE
            dialog.pending_2xx, dialog.state = None, "confirmed"
            self._events.append(CallEnded(dialog.call_id, "no ACK for the 200 OK"))
            self._bye(dialog, now)
        elif pending.due(now):
            self._send(pending.data, pending.dest)
            pending.advance()

    def _bye(self, dialog: Dialog, now: float) -> None:
        dialog.state, dialog.timer = "terminated", None
        self._dialogs.pop(dialog.call_id, None)
        self._send_in_dialog(dialog, "BYE", now)

    def _send_in_dialog(self, dialog: Dialog, method: str, now: float,
                        extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        reliable = dialog.stream_peer is not None
        req = dialog.request(method, self.config.host, self.config.port, "TCP" if reliable else "UDP", extra, body)
        dest = dialog.stream_peer or dialog.next_hop()  # connection reuse on TCP, like the responses
        if dest is None:
            if method in ("INVITE", "UPDATE"):
                self._end_session(dialog, "session refresh impossible: no route to the caller", now)
            else:
                self._events.append(RequestDone(dialog.call_id, method, 416))
            return
        ct = ClientTransaction(dialog.call_id, req, dest, reliable, now)
        self._client[ct.branch] = ct
        self._send(ct.data, dest)

    def _dialog_for(self, req: Request) -> Dialog | None:
        dialog = self._dialogs.get(req.get("call-id") or "")
        if dialog is None:
            return None
        try:
            to_tag, from_tag = req.name_addr("to").tag, req.name_addr("from").tag
        except ValueError:
            return None
        if to_tag != dialog.local_tag or from_tag != dialog.remote_tag:
            return None
        return dialog

    def _dialog_headers(self, req: Request) -> list[tuple[str, str]]:
        """Record-Route copied in order (§12.1.1) and our Contact."""
        return [(n, v) for n, v in req.headers if n == "record-route"] + [("contact", f"<{self._contact_uri()}>")]

    def _contact_uri(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        suffix = "" if self.config.transport == "UDP" else f";transport={self.config.transport.lower()}"
        return f"sip:sip-to-ai@{host}:{self.config.port}{suffix}"

    def _reply(self, txn: ServerTransaction, status: int, now: float, tag: str = "",
               extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        extra = list(extra or []) + [("server", self.config.server)]
        resp = message.response(txn.request, status, tag or new_tag(), extra, body)
        method = txn.request.method if txn.request.method in self._handlers else "other"  # bounded keys
        self.stats[f"{method} {status}"] += 1
        self._send(txn.respond(resp, now), txn.dest)

    def _stamp_via(self, req: Request, source: Address) -> Address:
        """Add received/rport to the top Via (§18.2.1, RFC 3581 §4) and return where responses go (§18.2.2)."""
        index = next(i for i, (n, _) in enumerate(req.headers) if n == "via")
        parts = g.split_list(req.headers[index][1])
        top = Via.parse(parts[0])
        value = parts[0].rstrip()
        if "rport" in top.params and not top.params["rport"]:
            value = _drop_param(value, "rport") + f";received={source[0]};rport={source[1]}"
        elif top.host != source[0]:
            value += f";received={source[0]}"
        req.headers[index] = ("via", ",".join([value, *parts[1:]]))
        if self.config.force_rport or "rport" in top.params:
            return source
        return source[0], top.port or 5060  # `received` when sent-by differs, else sent-by: the same address

    def _malformed(self, exc: SipParseError, source: Address) -> None:
        """§16.3 / §21.4.1: answer a broken request when a Via can carry the answer; drop everything else."""
        req = Request(exc.headers, method="?")
        cseq = (req.get("cseq") or "").upper()
        if not exc.request or req.get("via") is None or cseq.endswith("ACK"):
            self.stats["dropped"] += 1
            return
        dest = source
        try:
            top = Via.parse(g.split_list(req.get("via") or "")[0])
        except ValueError:
            top = None
        if top is not None and not self.config.force_rport and "rport" not in top.params:
            dest = (source[0], top.port or 5060)
        resp = message.response(req, exc.status_hint, new_tag(), [("server", self.config.server)])
        self.stats["answered_malformed"] += 1
        self._send(bytes(resp), dest)

    def _send(self, data: bytes, dest: Address) -> None:
        self._out.append((data, dest))


def _drop_param(value: str, name: str) -> str:
    pieces = g.split_list(value, ";")
    return ";".join([pieces[0]] + [p for p in pieces[1:] if p.strip().split("=")[0].strip().lower() != name])


def _allows_update(req: Request) -> bool:
    return any(m.upper() == "UPDATE" for m in req.values("allow"))


def _user(value: str | None) -> str:
    try:
        return g.uri_user(message.NameAddr.parse(value or "").uri)
    except ValueError:
        return ""


def _media(neg: sdp.Negotiated) -> MediaParams:
    return MediaParams(neg.remote, neg.codec, neg.payload_type, neg.dtmf_payload_type, neg.sending)


def _answer_key(neg: sdp.Negotiated) -> tuple[object, ...]:
    return (neg.codec, neg.payload_type, neg.dtmf_payload_type, neg.answer_direction, neg.shape)


def _metadata(req: Request) -> dict[str, str]:
    """What the agent may use: X- headers, identity headers, the From display name and URIs."""
    meta = {req.original_name(n): v for n, v in req.headers if n.startswith("x-") or n in METADATA_HEADERS}
    frm = req.name_addr("from")
    meta["From-Display"] = frm.display
    meta["From-URI"] = unquote(frm.uri)
    meta["To-URI"] = unquote(req.name_addr("to").uri)
    meta["Request-URI"] = req.uri
    return {k: v for k, v in meta.items() if v}
