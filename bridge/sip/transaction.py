"""RFC 3261 §17 transactions with timers kept as deadlines (`now` passed in): our server side, our BYE/REFER side.

Server INVITE: Proceeding -> (non-2xx) Completed [G retransmits, H waits for the ACK] -> Confirmed [I] -> gone;
               (2xx) Accepted [RFC 6026 Timer L; the 2xx itself is retransmitted by the dialog, §13.3.1.4].
Server non-INVITE: Trying -> Completed [J answers retransmissions] -> gone.
Client non-INVITE: Trying [E retransmits T1..T2, F gives up after 64·T1 with a local 408] -> done.
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
    """One non-INVITE request we send (BYE, REFER, re-sent on UDP with Timer E until a final response)."""

    def __init__(self, call_id: str, request: Request, dest: Address, reliable: bool, now: float) -> None:
        self.call_id = call_id
        self.method = request.method
        self.branch = Via.parse(request.values("via")[0]).branch
        self.data = bytes(request)
        self.dest = dest
        self.final = 0
        self._interval = T1
        self._e_next: float | None = None if reliable else now + T1
        self._f = now + TIMEOUT

    def on_response(self, resp: Response) -> bool:
        """Feed a response matched on the branch; True once it is final."""
        if resp.status < 200:
            self._interval = T2  # §17.1.2.2: after a provisional, retransmit every T2
            return False
        self.final = resp.status
        return True

    def next_deadline(self) -> float | None:
        return None if self.final else min(t for t in (self._e_next, self._f) if t is not None)

    def on_timer(self, now: float) -> bytes | None:
        """Timer F: local 408; Timer E: the request again."""
        if self.final:
            return None
        if now >= self._f:
            self.final = 408
            return None
        if self._e_next is not None and now >= self._e_next:
            self._interval = min(2 * self._interval, T2)
            self._e_next = now + self._interval
            return self.data
        return None
