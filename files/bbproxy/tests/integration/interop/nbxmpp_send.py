"""Send one XMPP message with nbxmpp (Gajim's library; Debian python3-nbxmpp), GLib main loop.

    /usr/bin/python3 nbxmpp_send.py HOST PORT DOMAIN USER TO BODY CAFILE [--direct-tls]
    (password: env XMPP_PASSWORD)

nbxmpp does the XMPP (STARTTLS or direct TLS, SASL, bind) and GLib's GIO does the TLS with
GnuTLS (glib-networking), so its version is capped with G_TLS_GNUTLS_PRIORITY, not OpenSSL.
GIO trusts only the system store and nbxmpp takes no CA file: the one error ignored is
UNKNOWN_CA (the name check stays on), and this script then verifies the peer's chain against
CAFILE with GIO itself before it sends anything. Exit 0 once the server answered a ping sent
after the message.
"""

from __future__ import annotations

import os
import sys

import gi

gi.require_version("Gio", "2.0")
gi.require_version("GLib", "2.0")
from gi.repository import Gio, GLib  # noqa: E402
from nbxmpp.client import Client  # noqa: E402
from nbxmpp.const import ConnectionProtocol, ConnectionType  # noqa: E402
from nbxmpp.protocol import Iq, Message, Node  # noqa: E402

PROTOCOLS = {
    Gio.TlsProtocolVersion.TLS_1_0: "TLSv1",
    Gio.TlsProtocolVersion.TLS_1_1: "TLSv1.1",
    Gio.TlsProtocolVersion.TLS_1_2: "TLSv1.2",
    Gio.TlsProtocolVersion.TLS_1_3: "TLSv1.3",
}


def main(argv: list[str]) -> int:
    host, port, domain, user, to, body, cafile = argv[:7]
    direct_tls = "--direct-tls" in argv[7:]
    loop = GLib.MainLoop()
    outcome = {"line": "FAIL nbxmpp: timed out", "rc": 1}

    def finish(line: str, rc: int) -> None:
        outcome.update(line=line, rc=rc)
        loop.quit()

    client = Client()
    client.set_domain(domain)
    client.set_username(user)
    client.set_password(os.environ["XMPP_PASSWORD"])
    client.set_resource("nbxmpp")
    kind = ConnectionType.DIRECT_TLS if direct_tls else ConnectionType.START_TLS
    client.set_custom_host(f"{host}:{port}", ConnectionProtocol.TCP, kind)
    client.set_ignored_tls_errors({Gio.TlsCertificateFlags.UNKNOWN_CA})

    def on_pong(_client: Client, stanza: Iq, *_args: object) -> None:
        if stanza.getType() == "result":
            version = PROTOCOLS.get(client.tls_version, str(client.tls_version))
            finish(f"OK nbxmpp protocol={version} cipher={client.ciphersuite}", 0)
        else:
            finish(f"FAIL nbxmpp: ping answered with type={stanza.getType()}", 1)

    def on_connected(_client: Client, _signal: str) -> None:
        certificate, _errors = client.peer_certificate
        anchor = Gio.TlsCertificate.new_from_file(cafile)
        problems = certificate.verify(Gio.NetworkAddress.new(domain, 0), anchor)
        if problems:
            finish(f"FAIL nbxmpp: the peer's chain does not verify against the CA file: {problems}", 1)
            return
        client.send_stanza(Message(to=to, body=body, typ="chat"))
        ping = Iq(typ="get", to=domain)
        ping.addChild(node=Node("ping", attrs={"xmlns": "urn:xmpp:ping"}))
        client.send_stanza(ping, callback=on_pong)

    def on_failed(_client: Client, signal: str) -> None:
        finish(f"FAIL nbxmpp: {signal}: {client.get_error()}", 1)

    client.subscribe("connected", on_connected)
    client.subscribe("connection-failed", on_failed)
    client.subscribe("disconnected", on_failed)
    GLib.timeout_add_seconds(20, loop.quit)
    client.connect()
    loop.run()
    print(outcome["line"], flush=True)
    return int(outcome["rc"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
