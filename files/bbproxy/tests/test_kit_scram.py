"""The test kit's SCRAM-SHA-1 client (tests/kit.py, ScramSha1) against RFC 5802's own example."""

from __future__ import annotations

import pytest

from .kit import ScramSha1

# RFC 5802 section 5: user "user", password "pencil".
CLIENT_NONCE = b"fyko+d2lbbFgONRv9qkxdawL"
SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
CLIENT_FINAL = b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
SERVER_FINAL = b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="


def rfc_client() -> ScramSha1:
    scram = ScramSha1("user", "pencil")
    scram.first_bare = b"n=user,r=" + CLIENT_NONCE  # the RFC's nonce instead of a random one
    return scram


def test_the_rfc_5802_exchange() -> None:
    scram = rfc_client()
    assert scram.first() == b"n,,n=user,r=" + CLIENT_NONCE
    assert scram.final(SERVER_FIRST) == CLIENT_FINAL
    assert scram.verify(SERVER_FINAL)


def test_a_wrong_server_signature_is_refused() -> None:
    scram = rfc_client()
    scram.final(SERVER_FIRST)
    assert not scram.verify(b"v=" + b"A" * 28)
    assert not rfc_client().verify(SERVER_FINAL)  # nothing to verify before the final message


def test_a_server_nonce_that_does_not_extend_ours_is_refused() -> None:
    with pytest.raises(ValueError, match="nonce"):
        rfc_client().final(SERVER_FIRST.replace(b"r=fyko", b"r=XXXX"))
