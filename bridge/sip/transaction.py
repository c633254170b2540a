"""RFC 3261 §17 transactions with timers kept as deadlines (`now` passed in): our server side, our BYE/REFER side.

Server INVITE: Proceeding -> (non-2xx) Completed [G retransmits, H waits for the ACK] -> Confirmed [I] -> gone;
               (2xx) Accepted [RFC 6026 Timer L; the 2xx itself is retransmitted by the dialog, §13.3.1.4].
Server non-INVITE: Trying -> Completed [J answers retransmissions] -> gone.
Client non-INVITE: Trying [E retransmits T1..T2, F gives up after 64·T1 with a local 408] -> done.
Client INVITE (our session refresh): Calling [A retransmits T1, 2·T1, ..., B gives up after 64·T1] ->
               (non-2xx) Completed [our ACK, resent for each retransmitted final; D] -> gone;
               (2xx) Accepted [RFC 6026 Timer M: the dialog's ACK is resent for each retransmitted 2xx].
"""

from __future__ import annotations

from bridge.media import Address
from bridge.sip.message import Request, Response, Via

T1 = 0.5  # RTT estimate (§17.1.1.1)
T2 = 4.0  # the longest retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  # how long a message may linger in the network
TIMEOUT = 64 * T1  # Timers B, F, H, J, L


def server_key(req: Request) -> tuple[str, ...]:
    """§17.2.3: branch + sent-by + method (ACK matches INVITE); RFC 2543 peers are matched on the dialog fields."""
    via = req.vias()[0]
    method = "INVITE" if req.method == "ACK" else req.method
    sent_by = f"{via.host}:{via.port or 5060}"
    if via.branch.startswith("z9hG4bK") and len(via.branch) > 7:
        # The Call-ID is not in §17.2.3's key, but every true retransmission carries the same one; keeping it
        # apart stops a client that reuses branches across calls (RFC 4475 cparam01/02 do) from merging them.
        return ("3261", via.branch, sent_by, req.get("call-id") or "", method)
    frm = req.name_addr("from").tag
    return ("2543", req.get("call-id") or "", frm, str(req.cseq()[0]), sent_by, method)


class ServerTransaction:
    """One request we answer: remembers the last response for retransmitted requests."""

    def __init__(self, request: Request, dest: Address, reliable: bool, now: float) -> None:
        self.request = request
        self.dest = dest
        self.reliable = reliable
        self.invite = request.method == "INVITE"
        self.state = "proceeding"
        self.last: bytes | None = None
        self.final = 0
        self._end: float | None = None
        self._g_next: float | None = None
        self._g_interval = T1

    def respond(self, resp: Response, now: float) -> bytes:
        """Record a response; returns the bytes to send."""
        data = bytes(resp)
        self.last = data
        if resp.status < 200:
            return data
        self.final = resp.status
        if not self.invite:
            self.state, self._end = "completed", now + (0 if self.reliable else TIMEOUT)
        elif resp.status < 300:
            self.state, self._end = "accepted", now + TIMEOUT
        else:
            self.state, self._end = "completed", now + TIMEOUT
            self._g_next = None if self.reliable else now + T1
        return data

    def on_retransmission(self) -> bytes | None:
        """The same request again: the last response again (none for an ACK)."""
        return self.last

    def on_ack(self, now: float) -> None:
        """The ACK of a non-2xx final response: stop retransmitting, linger for Timer I."""
        if self.invite and self.state == "completed":
            self.state, self._g_next = "confirmed", None
            self._end = now + (0 if self.reliable else T4)

    @property
    def answered(self) -> bool:
        return self.final >= 200

    def next_deadline(self) -> float | None:
        times = [t for t in (self._g_next, self._end) if t is not None]
        return min(times) if times else None

    def on_timer(self, now: float) -> bytes | None:
        """Timer G: resend the non-2xx final response (T1 doubling up to T2)."""
        if self._g_next is not None and now >= self._g_next:
            self._g_interval = min(2 * self._g_interval, T2)
            self._g_next = now + self._g_interval
            return self.last
        return None

    def expired(self, now: float) -> bool:
        return self._end is not None and now >= self._end


class ClientTransaction:
    """One request we send in a dialog: BYE, REFER, UPDATE re-sent on UDP with Timer E, a re-INVITE with Timer A,
    until a final response. An INVITE's transaction then lingers (Timer D / M) to answer a retransmitted final
    response with its ACK again: ours for an error (§17.1.1.3), the dialog's for a 2xx (§13.2.2.4, RFC 6026)."""

    def __init__(self, call_id: str, request: Request, dest: Address, reliable: bool, now: float) -> None:
        self.call_id = call_id
        self.request = request
        self.method = request.method
        self.invite = request.method == "INVITE"
        self.branch = Via.parse(request.values("via")[0]).branch
        self.data = bytes(request)
        self.dest = dest
        self.final = 0
        self.ack: bytes | None = None  # what answers a retransmitted final response (INVITE only)
        self.linger_until: float | None = None
        self._interval = T1
        self._e_next: float | None = None if reliable else now + T1
        self._f = now + TIMEOUT

    def on_response(self, resp: Response, now: float) -> bool:
        """Feed a response matched on the branch; True for the first final one."""
        if self.final:
            return False
        if resp.status < 200:
            if self.invite:
                self._e_next = None  # §17.1.1.2: Proceeding, no more retransmissions
            else:
                self._interval = T2  # §17.1.2.2: after a provisional, retransmit every T2
            return False
        self.final = resp.status
        if self.invite:
            self.linger_until = now + TIMEOUT
            if resp.status >= 300:
                self.ack = bytes(self.ack_for(resp))
        return True

    def ack_for(self, resp: Response) -> Request:
        """§17.1.1.3: the ACK of an error response: the INVITE's R-URI, top Via, From, Call-ID, Route; its To."""
        headers = [("via", self.request.values("via")[0])]
        headers += [(n, v) for n, v in self.request.headers if n in ("max-forwards", "from", "call-id", "route")]
        headers += [("to", resp.get("to") or ""), ("cseq", f"{self.request.cseq()[0]} ACK")]
        return Request(headers, method="ACK", uri=self.request.uri)

    def next_deadline(self) -> float | None:
        if self.final:
            return self.linger_until
        return min(t for t in (self._e_next, self._f) if t is not None)

    def on_timer(self, now: float) -> bytes | None:
        """Timer F / B: local 408; Timer E / A: the request again."""
        if self.final:
            return None
        if now >= self._f:
            self.final = 408
            return None
        if self._e_next is not None and now >= self._e_next:
            self._interval = 2 * self._interval if self.invite else min(2 * self._interval, T2)
            self._e_next = now + self._interval
            return self.data
        return None

    def done(self, now: float) -> bool:
        """Final, and (an INVITE) no longer lingering for retransmitted final responses."""
        return self.final > 0 and (self.linger_until is None or now >= self.linger_until)
