"""Know before a certificate breaks: the chains the proxy serves, when each of them expires.

A chain breaks when its first certificate expires: the leaf, or an intermediate or cross-sign
served with it (GlobalSign's cross-sign of GTS Root R1 ends 2028-01-28, whatever the leaf
says). At start and after each reload (:func:`watch`) every served chain is read again with
:mod:`bbproxy.x509`: its two dates go to the metrics, and each certificate that expires within
``tls.expiry_warning_days`` is a warning line (an expired one an error line). ``--check-config``
prints :func:`describe` for each chain: its leaf, the certificate it ends at and the issuer a
client must trust for it, and the weakest link.

The files are read here a second time (OpenSSL has no public way to hand back the chain it
loaded); a file this module cannot read is one error line and no gauge, never a refused start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .certificates import CertChoice, cert_pairs
from .expiry_metrics import CertExpiry
from .settings import Settings
from .x509 import CertInfo, X509Error, parse_pem_chain

if TYPE_CHECKING:
    from .metrics import Recorder

log = logging.getLogger("bbproxy")

DEFAULT: Final = "default"  # the `chain` label values (bbproxy_certificate_* metrics)
DOMAIN: Final = "domain"
LEGACY: Final = "legacy"
CHAINS: Final = frozenset({DEFAULT, DOMAIN, LEGACY})
_SECONDS_PER_DAY: Final = 86400


@dataclass(frozen=True, slots=True)
class ServedChain:
    """One certificate file as the proxy serves it: the leaf first, then what is sent with it."""

    chain: str  # DEFAULT, DOMAIN or LEGACY
    domain: str  # the [certificates."DOMAIN"] name of a DOMAIN chain, else ""
    path: Path
    certs: tuple[CertInfo, ...]

    @property
    def leaf(self) -> CertInfo:
        return self.certs[0]

    @property
    def weakest(self) -> CertInfo:
        """The certificate that expires first (the leaf on a tie)."""
        return min(self.certs, key=lambda cert: cert.not_after)

    @property
    def name(self) -> str:
        which = {DEFAULT: "default certificate", LEGACY: "legacy chain"}.get(self.chain, self.domain)
        return f"{which} ({self.leaf.key_type}, {self.path})"

    def expiry(self) -> CertExpiry:
        return CertExpiry(
            self.chain,
            self.domain,
            self.leaf.key_type,
            self.leaf.not_after.timestamp(),
            self.weakest.not_after.timestamp(),
        )


def configured(settings: Settings) -> Iterator[tuple[str, str, CertChoice]]:
    """Every certificate set the proxy serves: (chain, domain, certificate files)."""
    yield DEFAULT, "", settings.cert
    for domain in settings.domains:  # as TlsContexts.load: only served domains' sets
        if domain in settings.certificates:
            yield DOMAIN, domain, settings.certificates[domain]
    if settings.tls.legacy_cert is not None:
        yield LEGACY, "", settings.tls.legacy_cert


def read_chains(settings: Settings) -> tuple[tuple[ServedChain, ...], tuple[str, ...]]:
    """The served chains, and one line per certificate file that could not be read.

    Per set, the last file of each key type: OpenSSL keeps one certificate per key type in a
    context, so a second RSA file replaces the first (and two gauges cannot share labels).
    """
    chains: dict[tuple[str, str, str], ServedChain] = {}
    errors = []
    for chain, domain, choice in configured(settings):
        for pair in cert_pairs(choice):
            try:
                certs = parse_pem_chain(pair.cert.read_bytes())
            except (OSError, X509Error) as exc:
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                errors.append(f"cannot read the expiry dates of {pair.cert}: {detail}")
                continue
            served = ServedChain(chain, domain, pair.cert, certs)
            chains[(chain, domain, served.leaf.key_type)] = served
    return tuple(chains.values()), tuple(errors)


def _when(moment: datetime, now: datetime) -> str:
    """``2028-01-28 00:00:00 UTC (in 412 days)`` or ``... (3 days ago)``."""
    seconds = (moment - now).total_seconds()
    days = int(abs(seconds) // _SECONDS_PER_DAY)
    ago = f"{days} day(s) ago" if seconds < 0 else f"in {days} day(s)"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({ago})"


def _which(chain: ServedChain, index: int) -> str:
    cert = chain.certs[index]
    if index == 0:
        return f"the leaf {cert.subject}"
    return f"certificate {index + 1} of {len(chain.certs)}, {cert.subject} (issued by {cert.issuer}),"


def problems(chains: tuple[ServedChain, ...], now: datetime, warn_days: int) -> list[tuple[int, str]]:
    """(logging level, line) for each served certificate that has expired (ERROR) or expires
    within ``warn_days`` (WARNING; none with 0)."""
    found = []
    for chain in chains:
        for index, cert in enumerate(chain.certs):
            left = (cert.not_after - now).total_seconds()
            if left <= 0:
                level, verb, hint = logging.ERROR, "expired", ": clients refuse this chain"
            elif left <= warn_days * _SECONDS_PER_DAY:
                level, verb, hint = logging.WARNING, "expires", ""
                if index > 0 and cert.not_after < chain.leaf.not_after:
                    hint = f", before the leaf ({chain.leaf.not_after:%Y-%m-%d})"
            else:
                continue
            found.append(
                (level, f"{chain.name}: {_which(chain, index)} {verb} {_when(cert.not_after, now)}{hint}")
            )
    return found


def describe(chain: ServedChain, now: datetime) -> list[str]:
    """What --check-config says about one chain: leaf, where it ends, weakest link."""
    leaf, last, weakest = chain.leaf, chain.certs[-1], chain.weakest
    if len(chain.certs) == 1 and last.self_issued:
        ends = "a self-signed leaf: clients must trust this very certificate"
    elif len(chain.certs) == 1:
        ends = f"the leaf itself (nothing sent with it); clients must trust its issuer {last.issuer}"
    elif last.self_issued:
        ends = f"the root {last.subject}, sent in the file, expires {_when(last.not_after, now)}"
    else:
        ends = (
            f"{last.subject}, expires {_when(last.not_after, now)}; "
            f"clients must trust its issuer {last.issuer}"
        )
    if weakest is leaf:
        weakest_text = "the leaf"
    else:
        weakest_text = (
            f"{weakest.subject} (issued by {weakest.issuer}), expires {_when(weakest.not_after, now)}"
        )
    return [
        f"{chain.name}: {len(chain.certs)} certificate(s)",
        f"  leaf: {leaf.subject}, expires {_when(leaf.not_after, now)}",
        f"  ends at: {ends}",
        f"  weakest link: {weakest_text}",
    ]


def check_config_lines(settings: Settings, now: datetime) -> list[str]:
    """--check-config's account of every served chain, then its problems (as in the log)."""
    chains, errors = read_chains(settings)
    lines = [line for chain in chains for line in describe(chain, now)]
    found = [
        f"bbproxy: {logging.getLevelName(level).lower()}: {line}"
        for level, line in problems(chains, now, settings.tls.expiry_warning_days)
    ]
    return [*lines, *(f"bbproxy: error: {line}" for line in errors), *found]


def watch(settings: Settings, recorder: Recorder, now: datetime) -> tuple[ServedChain, ...]:
    """At start and after each reload: log what expires soon, and give the metrics the dates."""
    chains, errors = read_chains(settings)
    for line in errors:
        log.error("%s", line)
    for level, line in problems(chains, now, settings.tls.expiry_warning_days):
        log.log(level, "%s", line)
    recorder.certificates(tuple(chain.expiry() for chain in chains))
    return chains
