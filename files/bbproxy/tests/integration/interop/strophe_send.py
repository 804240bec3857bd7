"""Send one XMPP message with libstrophe (Debian libstrophe0), driven through ctypes.

    strophe_send.py HOST PORT JID TO BODY CAFILE [--direct-tls]    (password: env XMPP_PASSWORD)

libstrophe does everything XMPP itself: STARTTLS (mandatory here) or direct TLS, certificate
checks against CAFILE, SASL, resource bind. This script only calls its public API: connect,
send the message, send a ping and wait for the server's answer (so the message was processed),
disconnect. Exit 0 on success; one line on failure. The TLS stack is OpenSSL, so OPENSSL_CONF
caps its version. xmppc, the Debian CLI on libstrophe, takes no host or port, hence this.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

XMPP_CONN_CONNECT = 0
XMPP_CONN_FLAG_MANDATORY_TLS = 1 << 1
XMPP_CONN_FLAG_LEGACY_SSL = 1 << 2  # TLS from the first byte (XEP-0368 / "old SSL")

CONN_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
)
STANZA_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def main(argv: list[str]) -> int:
    host, port, jid, to, body, cafile = argv[:6]
    direct_tls = "--direct-tls" in argv[6:]
    lib = ctypes.CDLL("libstrophe.so.0")
    for name in ("xmpp_ctx_new", "xmpp_conn_new", "xmpp_message_new", "xmpp_iq_new", "xmpp_stanza_new"):
        getattr(lib, name).restype = ctypes.c_void_p
    lib.xmpp_stanza_get_type.restype = ctypes.c_char_p
    lib.xmpp_initialize()
    ctx = ctypes.c_void_p(lib.xmpp_ctx_new(None, None))
    conn = ctypes.c_void_p(lib.xmpp_conn_new(ctx))
    flags = XMPP_CONN_FLAG_MANDATORY_TLS | (XMPP_CONN_FLAG_LEGACY_SSL if direct_tls else 0)
    lib.xmpp_conn_set_flags(conn, ctypes.c_long(flags))
    lib.xmpp_conn_set_jid(conn, jid.encode())
    lib.xmpp_conn_set_pass(conn, os.environ["XMPP_PASSWORD"].encode())
    lib.xmpp_conn_set_cafile(conn, cafile.encode())
    state = {"done": False, "result": "no answer to the ping", "connected": False, "events": []}

    def on_pong(_conn: int, stanza: int, _data: int) -> int:
        kind = lib.xmpp_stanza_get_type(ctypes.c_void_p(stanza))
        state["result"] = "ok" if kind == b"result" else f"ping answered with type={kind!r}"
        lib.xmpp_disconnect(conn)
        return 0

    pong = STANZA_HANDLER(on_pong)

    def on_conn(_conn: int, event: int, error: int, _stream_error: int, _data: int) -> None:
        state["events"].append((event, error))
        if event == XMPP_CONN_CONNECT:
            state["connected"] = True
            if not lib.xmpp_conn_is_secured(conn):
                state["result"] = "connected without TLS"
                lib.xmpp_disconnect(conn)
                return
            message = ctypes.c_void_p(lib.xmpp_message_new(ctx, b"chat", to.encode(), b"interop-msg"))
            lib.xmpp_message_set_body(message, body.encode())
            lib.xmpp_send(conn, message)
            lib.xmpp_stanza_release(message)
            iq = ctypes.c_void_p(lib.xmpp_iq_new(ctx, b"get", b"interop-ping"))
            ping = ctypes.c_void_p(lib.xmpp_stanza_new(ctx))
            lib.xmpp_stanza_set_name(ping, b"ping")
            lib.xmpp_stanza_set_ns(ping, b"urn:xmpp:ping")
            lib.xmpp_stanza_add_child(iq, ping)
            lib.xmpp_stanza_release(ping)
            lib.xmpp_id_handler_add(conn, pong, b"interop-ping", None)
            lib.xmpp_send(conn, iq)
            lib.xmpp_stanza_release(iq)
        else:
            state["done"] = True

    handler = CONN_HANDLER(on_conn)
    if lib.xmpp_connect_client(conn, host.encode(), ctypes.c_ushort(int(port)), handler, None) != 0:
        print("FAIL xmpp_connect_client refused to start", flush=True)
        return 1
    deadline = time.monotonic() + 20
    while not state["done"] and time.monotonic() < deadline:
        lib.xmpp_run_once(ctx, ctypes.c_ulong(100))
    if state["result"] != "ok":
        stage = "after login" if state["connected"] else "before login (TLS, SASL or bind)"
        print(f"FAIL libstrophe: {state['result']} {stage}; events={state['events']}", flush=True)
        return 1
    print("OK libstrophe sent the message and the server answered the ping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
