"""Certificate files into a context, and what a context can do with them.

:func:`load_pair` loads one chain and its key, turning every failure into one
:class:`CertificateError` line that names the file; :func:`suite_ids` asks a context, in
memory, which cipher suites its certificates' key types can serve (the router needs that to
give a client the modern or the legacy context: :mod:`bbproxy.tls`).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# OpenSSL's reasons for a key that belongs to no certificate of the chain: same type but
# another key, or another type altogether (an RSA key for an ECDSA certificate).
_MISMATCH_REASONS: Final = frozenset({"KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED", "KEY_TYPE_MISMATCH"})


class CertificateError(Exception):
    """A certificate or key could not be loaded; the message is one line for operators."""


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


# One certificate, or one per key type (RSA + ECDSA): OpenSSL then shows each client the one
# its offer can use (ECDSA suites -> ECDSA), so old RSA-only devices and new ones are both served.
CertChoice = CertPair | tuple[CertPair, ...]


def cert_pairs(choice: CertChoice) -> tuple[CertPair, ...]:
    return choice if isinstance(choice, tuple) else (choice,)


def load_pair(ctx: ssl.SSLContext, pair: CertPair) -> None:
    """Load ``pair`` into ``ctx``; any failure is a :class:`CertificateError` naming the file."""
    for path in (pair.cert, pair.key):
        # load_cert_chain's own errors do not always say which file; check both first.
        try:
            with path.open("rb"):
                pass
        except FileNotFoundError:
            raise CertificateError(f"cannot read {path}: file not found") from None
        except PermissionError:
            raise CertificateError(f"cannot read {path}: permission denied") from None
        except OSError as exc:
            raise CertificateError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
    try:
        ctx.load_cert_chain(pair.cert, pair.key)
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if reason.upper() in _MISMATCH_REASONS:
            raise CertificateError(f"key {pair.key} does not match certificate {pair.cert}") from None
        raise CertificateError(f"cannot load {pair.cert} / {pair.key}: {reason}") from None
    except OSError as exc:
        raise CertificateError(f"cannot load {pair.cert} / {pair.key}: {exc.strerror or exc}") from None


def suite_ids(ctx: ssl.SSLContext) -> frozenset[int]:
    """The cipher suite numbers (as a ClientHello lists them) ``ctx`` can negotiate with its
    certificates, TLS 1.3's too: an ECDSA-only set cannot do ECDHE-RSA suites, and IE 11
    offers AEAD only with ECDSA, so the key types matter to :func:`bbproxy.tls.policy_for`."""
    usable = {"auth-any"}  # TLS 1.3 suites name no authentication
    for auth in ("auth-rsa", "auth-ecdsa"):
        names = [c["name"] for c in ctx.get_ciphers() if c["auth"] == auth and c["protocol"] != "TLSv1.3"]
        if names and _answers_tls12(ctx, ":".join(names)):
            usable.add(auth)
    return frozenset(int(c["id"]) & 0xFFFF for c in ctx.get_ciphers() if c["auth"] in usable)


def _answers_tls12(server_ctx: ssl.SSLContext, ciphers: str) -> bool:
    """Whether ``server_ctx`` answers a TLS 1.2 ClientHello offering only ``ciphers`` (in memory)."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.minimum_version = client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client_ctx.set_ciphers(ciphers)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    s_in.write(c_out.read())
    try:
        server.do_handshake()
    except ssl.SSLWantReadError:
        return True  # its ServerHello is out, waiting for the client's next flight
    except ssl.SSLError:
        return False
    return True
