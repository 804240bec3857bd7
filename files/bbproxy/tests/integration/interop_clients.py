"""One adapter per third-party XMPP client for the interop matrix (test_interop.py).

Each adapter says how to run its client so that it logs in as USER over STARTTLS or direct
TLS and sends one chat message to TO: the command, its environment (CA, TLS version knobs)
and, where the client reads one, its config file. Passwords go through the environment or a
0600 file in the run's directory, never the command line. The test decides success: the
client's exit status AND the message arriving at a second account.

Each client is also run held at its oldest TLS version, TLS 1.0 unless the client refuses it
itself (docs/interop.md has the table). How the version is held, per stack:
  OpenSSL (libstrophe, Net::XMPP/IO::Socket::SSL)  OPENSSL_CONF file: Min/MaxProtocol, @SECLEVEL=0
  slixmpp (Python ssl)                             its own --tls (min = max, @SECLEVEL=0)
  Node (xmpp.js)                                   tls.DEFAULT_MIN/MAX_VERSION, DEFAULT_CIPHERS (the
                                                   CLI has --tls-min-v1.0 but no --tls-max-v1.0)
  GnuTLS (nbxmpp via GIO)                          G_TLS_GNUTLS_PRIORITY
  JSSE (Java)                                      setEnabledProtocols + a java.security override
  Go crypto/tls (go-sendxmpp)                      not possible: the client only sets a minimum
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .support import LOGIN_CHECK, REPO_ROOT

INTEROP_DIR = Path(__file__).resolve().parent / "interop"
# `make interop-deps` installs the pinned npm packages here (ignored by git).
NODE_MODULES = REPO_ROOT / ".interop" / "node_modules"
SYSTEM_PYTHON = "/usr/bin/python3"  # nbxmpp is a Debian package: the system Python, not the venv

OPENSSL_LEGACY_CONF = """\
# Holds every OpenSSL-based client of this run at {version} (and lets OpenSSL 3 do it at all).
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = legacy
[legacy]
MinProtocol = {version}
MaxProtocol = {version}
CipherString = DEFAULT:@SECLEVEL=0
"""
# Our version names ("1.0", "1.1") in each stack's spelling.
OPENSSL_NAMES = {"1.0": "TLSv1", "1.1": "TLSv1.1"}
GNUTLS_NAMES = {"1.0": "VERS-TLS1.0", "1.1": "VERS-TLS1.1"}

# JDK 17 lists TLSv1 and TLSv1.1 in jdk.tls.disabledAlgorithms; this file (given with
# -Djava.security.properties=) replaces the list for this run only, without them.
JAVA_SECURITY_TLS10 = """\
jdk.tls.disabledAlgorithms=SSLv3, RC4, DES, MD5withRSA, DH keySize < 1024, EC keySize < 224, \\
    3DES_EDE_CBC, anon, NULL
"""


@dataclasses.dataclass(frozen=True)
class Job:
    """One cell of the matrix: who logs in where, how, and what they send."""

    host: str
    port: int
    domain: str
    user: str
    password: str
    to: str  # bare JID of the receiving account
    peer_password: str  # the receiving account's (only the slixmpp check logs it in itself)
    body: str
    cafile: Path
    direct_tls: bool
    legacy_tls: str | None  # "1.0" / "1.1": hold the client at that version; None: its default
    workdir: Path
    java_classes: Path  # where JavaTls10.java was compiled (conftest.java_classes, once)

    @property
    def jid(self) -> str:
        return f"{self.user}@{self.domain}"

    def secret_file(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.touch(mode=0o600)
        path.write_text(text)
        return path

    def openssl_conf(self, version: str) -> Path:
        path = self.workdir / "openssl-legacy.cnf"
        path.write_text(OPENSSL_LEGACY_CONF.format(version=OPENSSL_NAMES[version]))
        return path


@dataclasses.dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    stdin: bytes = b""


@dataclasses.dataclass(frozen=True)
class Adapter:
    name: str
    stack: str  # the TLS implementation the client uses
    install: str  # what to do when it is missing
    executable: str  # checked before the run (a path or a name on PATH)
    build: Callable[[Job], Invocation]
    direct_tls: bool = True  # the client can do direct TLS (XEP-0368)
    legacy_tls: str | None = "1.0"  # the oldest version it can be held at; None: cannot be held
    legacy_note: str = ""  # why not TLS 1.0
    checks_delivery: bool = False  # the client itself proves the message arrived
    library: str | None = None  # a shared library it needs (ctypes.util.find_library name)
    path: Path | None = None  # a file it needs (e.g. the npm install)

    def require(self) -> None:
        """Fail (never skip) with the install hint when the client is not on this machine."""
        missing = shutil.which(self.executable) is None
        missing |= self.library is not None and ctypes.util.find_library(self.library) is None
        missing |= self.path is not None and not self.path.exists()
        if missing:
            pytest.fail(f"{self.name} is not installed: {self.install}", pytrace=False)

    def invocation(self, job: Job) -> Invocation:
        return self.build(job)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENSSL_CONF", "SSL_CERT_FILE", "NODE_OPTIONS")}
    env.update(extra)
    return env


def _openssl_env(job: Job, **extra: str) -> dict[str, str]:
    if job.legacy_tls is not None:
        extra["OPENSSL_CONF"] = str(job.openssl_conf(job.legacy_tls))
    return _env(**extra)


def _slixmpp(job: Job) -> Invocation:
    # The project's own login check drives slixmpp. It logs in the receiving account itself
    # (through the same door, at TLS 1.3) and checks the delivery to its full JID itself.
    argv = [
        sys.executable, str(LOGIN_CHECK), "--host", job.host, "--port", str(job.port),
        "--domain", job.domain, "--user", job.user, "--peer", job.to.split("@")[0], "--peer-tls", "1.3",
        "--tls", job.legacy_tls or "1.3", "--cafile", str(job.cafile), "--timeout", "15",
    ]  # fmt: skip
    if job.direct_tls:
        argv.append("--direct-tls")
    return Invocation(
        argv, _env(XMPP_CHECK_PASSWORD=job.password, XMPP_CHECK_PEER_PASSWORD=job.peer_password)
    )


def _libstrophe(job: Job) -> Invocation:
    argv = [
        sys.executable, str(INTEROP_DIR / "strophe_send.py"), job.host, str(job.port),
        f"{job.jid}/strophe", job.to, job.body, str(job.cafile),
    ]  # fmt: skip
    if job.direct_tls:
        argv.append("--direct-tls")
    return Invocation(argv, _openssl_env(job, XMPP_PASSWORD=job.password))


def _go_sendxmpp(job: Job) -> Invocation:
    config = job.secret_file("go-sendxmpp.conf", f"username: {job.jid}\npassword: {job.password}\n")
    argv = ["go-sendxmpp", "-f", str(config), "-j", f"{job.host}:{job.port}", "--timeout", "10"]
    if job.direct_tls:
        argv.append("-t")
    argv += ["--tls-version", "12", job.to]
    # Go reads extra roots from SSL_CERT_FILE on Linux.
    return Invocation(argv, _env(SSL_CERT_FILE=str(job.cafile)), stdin=job.body.encode() + b"\n")


def _sendxmpp(job: Job) -> Invocation:
    config = job.secret_file(
        "sendxmpprc",
        f"username: {job.user}\njserver: {job.host}\nport: {job.port}\n"
        f"password: {job.password}\ncomponent: {job.domain}\n",
    )
    argv = ["sendxmpp", "-f", str(config), "-a", str(job.cafile), "-e" if job.direct_tls else "-t", job.to]
    return Invocation(argv, _openssl_env(job), stdin=job.body.encode() + b"\n")


def _nbxmpp(job: Job) -> Invocation:
    argv = [
        SYSTEM_PYTHON, str(INTEROP_DIR / "nbxmpp_send.py"), job.host, str(job.port), job.domain,
        job.user, job.to, job.body, str(job.cafile),
    ]  # fmt: skip
    if job.direct_tls:
        argv.append("--direct-tls")
    extra = {"XMPP_PASSWORD": job.password}
    if job.legacy_tls is not None:  # Debian's GnuTLS still has TLS 1.0 in NORMAL: only the cap
        extra["G_TLS_GNUTLS_PRIORITY"] = f"NORMAL:-VERS-TLS-ALL:+{GNUTLS_NAMES[job.legacy_tls]}"
    return Invocation(argv, _env(**extra))


def _xmppjs(job: Job) -> Invocation:
    argv = [
        "node", str(INTEROP_DIR / "xmppjs_send.mjs"), job.host, str(job.port), job.domain, job.user,
        job.to, job.body,
    ]  # fmt: skip
    if job.direct_tls:
        argv.append("--direct-tls")
    extra = {"XMPP_PASSWORD": job.password, "XMPPJS_MODULES": str(NODE_MODULES),
             "NODE_EXTRA_CA_CERTS": str(job.cafile)}  # fmt: skip
    if job.legacy_tls is not None:
        extra["XMPPJS_TLS_VERSION"] = OPENSSL_NAMES[job.legacy_tls]
    return Invocation(argv, _env(**extra))


def _java(job: Job) -> Invocation:
    argv = ["java"]
    if job.legacy_tls is not None:
        security = job.workdir / "java-legacy.security"
        security.write_text(JAVA_SECURITY_TLS10)
        argv.append(f"-Djava.security.properties={security}")
    argv += [
        "-cp", str(job.java_classes), "JavaTls10", job.host, str(job.port), job.domain, job.user,
        job.to, job.body, str(job.cafile), OPENSSL_NAMES.get(job.legacy_tls or "", "TLSv1.3"),
    ]  # fmt: skip
    if job.direct_tls:
        argv.append("--direct-tls")
    return Invocation(argv, _env(XMPP_PASSWORD=job.password))


_APT = "apt-get install"
ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("slixmpp", "Python ssl (OpenSSL)", "pip install slixmpp (requirements-dev.txt)",
                sys.executable, _slixmpp, checks_delivery=True),
        Adapter("libstrophe", "OpenSSL", f"{_APT} libstrophe0", sys.executable, _libstrophe,
                library="strophe", legacy_tls="1.1",
                legacy_note="libstrophe refuses TLS 1.0 itself: held at TLS 1.0 by OpenSSL's configuration "
                "it fails with 'no protocols available' before sending a byte"),
        Adapter("go-sendxmpp", "Go crypto/tls", f"{_APT} go-sendxmpp", "go-sendxmpp", _go_sendxmpp,
                legacy_tls=None, legacy_note="go-sendxmpp sets only a minimum (--tls-version); Go has "
                "no knob for the maximum, so it always offers TLS 1.3"),
        Adapter("sendxmpp", "Perl IO::Socket::SSL (OpenSSL)", f"{_APT} sendxmpp", "sendxmpp", _sendxmpp),
        Adapter("nbxmpp", "GIO / GnuTLS", f"{_APT} python3-nbxmpp", SYSTEM_PYTHON, _nbxmpp),
        Adapter("xmpp.js", "Node.js tls (OpenSSL)", "Node >= 20.10, then make interop-deps (pinned npm)",
                "node", _xmppjs, path=NODE_MODULES / "@xmpp" / "client" / "package.json"),
        Adapter("java", "JSSE (OpenJDK 17)", f"{_APT} default-jdk-headless", "javac", _java),
    )
}  # fmt: skip
