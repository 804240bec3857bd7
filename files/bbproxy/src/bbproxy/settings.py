"""What the proxy is configured with: frozen dataclasses, their defaults, the allowed choices,
and the parsers of single values (an address, a domain, a network, a choice), each raising a
:class:`ConfigError` that names the key.

:mod:`bbproxy.config` builds a :class:`Settings` from the command line and the TOML file with
these; docs/configuration.md lists every option.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .certificates import CertChoice

DEFAULT_LISTEN: Final = ("0.0.0.0:5222", "[::]:5222")
DEFAULT_BACKEND: Final = "127.0.0.1:5200"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOOPS: Final = ("auto", "asyncio", "uvloop")
PROXY_PROTOCOLS: Final = ("off", "v1", "v2")
TLS_ROUTINGS: Final = ("terminate-all", "legacy-only")
# How a spliced client reaches Prosody (tls.splice): its direct-TLS port, or a plaintext port where
# bbproxy sends the PROXY header (send_proxy_protocol) and does STARTTLS first.
TLS_SPLICES: Final = ("direct-tls", "starttls")


class ConfigError(Exception):
    """Bad configuration; str() is the one line shown to the operator."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 10000
    pre_tls_timeout: float = 30.0
    pre_tls_max_bytes: int = 8192
    handshake_timeout: float = 30.0
    backend_connect_timeout: float = 10.0
    # From the client's first bytes relayed to the backend until the backend's first answer: a
    # backend that accepts but never speaks (hung, overloaded) ends the session with a stream error.
    backend_answer_timeout: float = 30.0
    # On SIGTERM: how long live sessions may go on before system-shutdown ends them.
    shutdown_grace: float = 30.0
    # After a client stops sending (TCP FIN or close_notify): how long Prosody gets to finish
    # its answer before the session is closed anyway.
    half_close_timeout: float = 30.0
    # Per source address (IPv6: per ipv6_prefix network); 0 = no limit. Answered with a stream
    # error, never a silent drop. Sized for carrier-grade NAT: many phones behind one IPv4
    # address (docs/configuration.md, "Per-IP limits").
    max_connections_per_ip: int = 100
    connect_rate_per_ip: int = 120  # new connections per minute, in bursts of up to as many
    ipv6_prefix: int = 64  # IPv6 sources are counted per network of this many bits
    exempt_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


DEFAULT_TLS_BACKEND: Final = Address("127.0.0.1", 5202)


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """Who gets which TLS: the proxy's own (terminate) or Prosody's (pass through).

    A client is *legacy* when the highest version its ClientHello offers is below TLS 1.2,
    or its JA3 hash is listed in ``legacy_ja3``. Legacy clients are always terminated here
    (and refused unless their address is in ``legacy_networks``); with ``routing =
    "legacy-only"`` everyone else is passed through, still encrypted, to ``backend``.
    """

    routing: str = "terminate-all"
    backend: Address = DEFAULT_TLS_BACKEND
    splice: str = "direct-tls"  # what ``backend`` is: Prosody's direct TLS, or STARTTLS (TLS_SPLICES)
    legacy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )
    legacy_ja3: frozenset[str] = frozenset()
    # TLS 1.0/1.1 key exchange by RSA (no forward secrecy), for clients without ECDHE (Java 6).
    legacy_plain_rsa: bool = False
    # Certificate(s) for every legacy client, whatever the domain: a chain old devices trust.
    legacy_cert: CertChoice | None = None
    # A warning in the log at start and reload when a served certificate (leaf, intermediate or
    # cross-sign) expires within this many days; 0: none (an expired one is always an error).
    expiry_warning_days: int = 21


@dataclass(frozen=True, slots=True)
class Settings:
    listen: tuple[Address, ...]
    direct_tls_listen: tuple[Address, ...]
    backend: Address
    domains: tuple[str, ...]
    min_tls: str
    cert: CertChoice
    certificates: Mapping[str, CertChoice] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    log_level: str = "info"
    loop: str = "auto"
    workers: int = 1
    metrics_listen: Address | None = None
    send_proxy_protocol: str = "off"
    tls: TlsPolicy = field(default_factory=TlsPolicy)
    config_file: Path | None = None
    fingerprints: Path | None = None  # the operator's names for client fingerprints


# -- single values: each parser names its key in the error -----------------------------

_DOMAIN_RE: Final = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z"
)


def parse_address(value: object, key: str) -> Address:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``."""
    if not isinstance(value, str):
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"{key}: {value!r} is not [IPv6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"{key}: {value!r} is not HOST:PORT (write IPv6 as [::1]:5222)")
    if not host:
        raise ConfigError(f"{key}: {value!r} has no host")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} has no valid port") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range 1-65535")
    if text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{key}: {host!r} is not an IPv6 address") from None
    return Address(host, port)


def normalize_domain(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a domain name, got {value!r}")
    domain = value.strip().rstrip(".").lower()
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"{key}: {value!r} is not a valid domain name") from None
    if not _DOMAIN_RE.match(ascii_domain):
        raise ConfigError(f"{key}: {value!r} is not a valid domain name")
    return domain


def string_list(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings")
    return list(value)


def choice(value: object, key: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def file_path(value: object, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a file path")
    return Path(value)


def network(value: str, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an address or CIDR network") from None


def optional_address(value: object, key: str) -> Address | None:
    return None if value in ("", None) else parse_address(value, key)


def optional_path(value: object, key: str) -> Path | None:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a file path")
    return Path(value) if value else None
