"""A minimal blocking XMPP client for the torture run and the benchmark's whole logins (bench/login.py):
STARTTLS (or direct TLS), TLS 1.0 (the context decides), SASL PLAIN or SCRAM-SHA-1, bind.

Lighter than slixmpp (no process per client), so the fault scenarios can hold many sessions
and poll for the first good login every few milliseconds. Only for loopback tests: PLAIN is
sent inside TLS to the proxy, and the password never appears in an exception or a log.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import socket
import ssl
import struct
import time

from ..kit import STARTTLS, STREAM_ERROR_RE, ScramSha1, stream_header

JID = re.compile(rb"<jid>([^<]+)</jid>")
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL_TEXT = re.compile(rb"<(challenge|success)\b[^>]*?(?:/>|>([^<]*)</\1>)")
MECHANISMS = ("PLAIN", "SCRAM-SHA-1")


class LoginFailed(Exception):
    """Why a login did not complete; ``stage`` says how far it got, ``condition`` the stream error."""

    def __init__(self, stage: str, detail: str, condition: str | None = None) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage = stage
        self.condition = condition


class XmppSession:
    def __init__(
        self,
        port: int,
        domain: str,
        user: str,
        password: str,
        ctx: ssl.SSLContext,
        timeout: float = 10.0,
        *,
        mechanism: str = "PLAIN",
        direct_tls: bool = False,
        tls_session: ssl.SSLSession | None = None,
    ) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism: one of {MECHANISMS}")
        self.mechanism = mechanism
        self.direct_tls = direct_tls
        self.tls_session = tls_session  # offered for resumption; after the handshake, the new one
        self.resumed = False
        self.port = port
        self.domain = domain
        self.user = user
        self._password = password
        self.ctx = ctx
        self.timeout = timeout
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.jid = ""
        self.stage = "connect"
        self.buffer = b""

    # -- reading ---------------------------------------------------------------------------

    def _read_until(self, *needles: bytes, deadline: float) -> bytes:
        """Read until one of ``needles`` is in the buffer; raise LoginFailed on error/EOF/deadline.

        Not kit.recv_until: the buffer outlives the call (what follows a needle is kept) and
        every way of ending is a LoginFailed with the stage and the stream error's condition.
        """
        while not any(needle in self.buffer for needle in needles):
            self._read_more(deadline)
        return self.buffer

    def _read_more(self, deadline: float) -> None:
        """One more read into the buffer; LoginFailed on a stream error, EOF or the deadline."""
        assert self.sock is not None
        match = STREAM_ERROR_RE.search(self.buffer)
        if match:
            condition = match.group(1).decode()
            raise LoginFailed(self.stage, f"stream error <{condition}/>", condition)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LoginFailed(self.stage, "timed out")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise LoginFailed(self.stage, "timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise LoginFailed(self.stage, f"{type(exc).__name__}") from None
        if not chunk:
            match = STREAM_ERROR_RE.search(self.buffer)
            condition = match.group(1).decode() if match else None
            raise LoginFailed(self.stage, f"closed ({condition or 'no stream error'})", condition)
        self.buffer += chunk

    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise LoginFailed(self.stage, f"send: {type(exc).__name__}") from None

    # -- the login -------------------------------------------------------------------------

    def login(self) -> str:
        """Log in and bind; returns the full JID. Raises LoginFailed (the socket is closed then)."""
        try:
            return self._login()
        except LoginFailed:
            self.close()
            raise

    def _login(self) -> str:
        deadline = time.monotonic() + self.timeout
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        except OSError as exc:
            raise LoginFailed("connect", type(exc).__name__) from None
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = raw
        if not self.direct_tls:
            self.stage = "pre-tls"
            self._send(stream_header(self.domain))
            self._read_until(b"</stream:features>", deadline=deadline)
            self.buffer = b""
            self._send(STARTTLS)
            self._read_until(b"<proceed", deadline=deadline)
            self.buffer = b""
        self.stage = "tls-handshake"
        try:
            raw.settimeout(max(deadline - time.monotonic(), 0.01))
            tls = self.ctx.wrap_socket(raw, server_hostname=self.domain, session=self.tls_session)
        except (OSError, ssl.SSLError) as exc:
            raise LoginFailed(self.stage, type(exc).__name__) from None
        self.sock, self.resumed, self.tls_session = tls, tls.session_reused, tls.session
        self.stage = "backend-stream"
        self._send(stream_header(self.domain))
        self._read_until(b"</stream:features>", deadline=deadline)
        self.buffer = b""
        self.stage = "sasl"
        if self.mechanism == "PLAIN":
            self._sasl_plain(deadline)
        else:
            self._sasl_scram_sha1(deadline)
        self.buffer = b""
        self.stage = "bind"
        self._send(stream_header(self.domain))
        self._read_until(b"</stream:features>", deadline=deadline)
        self.buffer = b""
        resource = f"torture-{secrets.token_hex(3)}"
        self._send(
            f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>".encode()
        )
        self._read_until(b"</iq>", deadline=deadline)
        match = JID.search(self.buffer)
        if match is None:
            raise LoginFailed(self.stage, "no JID in the bind result")
        self.jid = match.group(1).decode()
        self.buffer = b""
        self.stage = "session"
        return self.jid

    def _sasl_plain(self, deadline: float) -> None:
        token = base64.b64encode(b"\0" + self.user.encode() + b"\0" + self._password.encode()).decode()
        self._send(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{token}</auth>".encode())
        self._sasl_answer("success", deadline)

    def _sasl_scram_sha1(self, deadline: float) -> None:
        scram = ScramSha1(self.user, self._password)
        first = base64.b64encode(scram.first()).decode()
        self._send(f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-1'>{first}</auth>".encode())
        server_first = self._sasl_answer("challenge", deadline)
        self.buffer = b""
        try:
            final = base64.b64encode(scram.final(server_first)).decode()
        except (ValueError, KeyError):
            raise LoginFailed(self.stage, "bad SCRAM challenge") from None
        self._send(f"<response xmlns='{SASL_NS}'>{final}</response>".encode())
        if not scram.verify(self._sasl_answer("success", deadline)):
            raise LoginFailed(self.stage, "the server's SCRAM signature does not match")

    def _sasl_answer(self, wanted: str, deadline: float) -> bytes:
        """Wait for ``<challenge>`` or ``<success>`` (or a ``<failure>``); its decoded text."""
        while (match := SASL_TEXT.search(self.buffer)) is None:
            if b"<failure" in self.buffer:
                raise LoginFailed(self.stage, "SASL failure")
            self._read_more(deadline)
        if match.group(1).decode() != wanted:
            raise LoginFailed(self.stage, f"<{match.group(1).decode()}> where <{wanted}> was due")
        return base64.b64decode(match.group(2) or b"")

    # -- after login -----------------------------------------------------------------------

    def send_message(self, to: str, body: str) -> None:
        stanza_id = secrets.token_hex(4)
        self._send(f"<message to='{to}' type='chat' id='{stanza_id}'><body>{body}</body></message>".encode())

    def wait_for(self, needle: bytes, timeout: float) -> bool:
        try:
            self._read_until(needle, deadline=time.monotonic() + timeout)
        except LoginFailed:
            return False
        return True

    def wait_closed(self, timeout: float) -> tuple[str, float]:
        """Wait for the server to end this session: (how it ended, seconds waited).

        ``stream-error:<condition>``, ``closed`` (no stream error), or ``still-open`` at the deadline.
        """
        assert self.sock is not None
        start = time.monotonic()
        deadline = start + timeout
        while True:
            match = STREAM_ERROR_RE.search(self.buffer)
            if match:
                return f"stream-error:{match.group(1).decode()}", time.monotonic() - start
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "still-open", timeout
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return "still-open", timeout
            except (OSError, ssl.SSLError):
                chunk = b""
            if not chunk:
                match = STREAM_ERROR_RE.search(self.buffer)
                how = f"stream-error:{match.group(1).decode()}" if match else "closed"
                return how, time.monotonic() - start
            self.buffer += chunk

    def abort(self) -> None:
        """Reset the connection (SO_LINGER 0): no close_notify, no ``</stream:stream>``, as when
        the network under a device goes away and its server only sees the reset."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.sock.close()
            self.sock = None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError, ssl.SSLError):
                self.sock.sendall(b"</stream:stream>")
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
