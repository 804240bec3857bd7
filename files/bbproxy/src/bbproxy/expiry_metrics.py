"""The certificate expiry gauges: what :class:`bbproxy.metrics.Metrics` is given at start and
at each reload (:func:`bbproxy.expiry.watch`), and the two families it exposes from it.

Timestamps, not days left, as Prometheus names them (``..._timestamp_seconds``): a gauge of
days would be as old as the last reload, while ``(x - time()) / 86400`` in PromQL is current at
every evaluation (docs/operating.md has the alert). Labels come from the configuration only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

LABELS: Final = ("chain", "domain", "key_type")
_GAUGES: Final = (
    (
        "bbproxy_certificate_expiry_timestamp_seconds",
        "When the leaf certificate of each served chain expires (notAfter, Unix time).",
        "leaf_not_after",
    ),
    (
        "bbproxy_certificate_chain_expiry_timestamp_seconds",
        "When the first certificate served in each chain (leaf, intermediate or cross-sign) expires.",
        "chain_not_after",
    ),
)


@dataclass(frozen=True, slots=True)
class CertExpiry:
    """When one served chain breaks (Unix times). ``chain`` is default, domain or legacy,
    ``domain`` the name of a ``[certificates."DOMAIN"]`` chain (else empty), ``key_type`` rsa,
    ecdsa, ... (:data:`bbproxy.x509.KEY_TYPES`)."""

    chain: str
    domain: str
    key_type: str
    leaf_not_after: float  # the leaf's notAfter
    chain_not_after: float  # the earliest notAfter of any certificate served with it


def families(expiries: tuple[CertExpiry, ...] | None) -> Iterator[Metric]:
    """The two gauges; with ``expiries`` None only their names and types (for describe())."""
    from prometheus_client.metrics_core import GaugeMetricFamily

    for name, doc, field in _GAUGES:
        gauge = GaugeMetricFamily(name, doc, labels=LABELS)
        for cert in expiries or ():
            gauge.add_metric((cert.chain, cert.domain, cert.key_type), getattr(cert, field))
        yield gauge
