"""Settings from the command line and an optional TOML file, validated into one frozen object.

Every problem becomes a :class:`ConfigError` whose message names the key or flag, so an
operator sees one clear line instead of a traceback. The settings' types, defaults and the
parsers of single values are :mod:`bbproxy.settings`; this module reads the flags and the
file, parses their tables and checks the rules between keys.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

from . import __version__
from .certificates import CertChoice, CertPair
from .settings import (
    DEFAULT_BACKEND,
    DEFAULT_LISTEN,
    DEFAULT_TLS_BACKEND,
    LOG_LEVELS,
    LOOPS,
    PROXY_PROTOCOLS,
    TLS_ROUTINGS,
    TLS_SPLICES,
    choice,
    file_path,
    network,
    normalize_domain,
    optional_address,
    optional_path,
    parse_address,
    string_list,
)

# Re-exported (`X as X`): callers have always imported these from here.
from .settings import Address as Address
from .settings import ConfigError as ConfigError
from .settings import Limits as Limits
from .settings import Settings as Settings
from .settings import TlsPolicy as TlsPolicy
from .tls import TLS_VERSIONS

# Limits where 0 means "off" rather than "nothing allowed".
_ZERO_MEANS_OFF: Final = frozenset({"max_connections_per_ip", "connect_rate_per_ip"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bbproxy",
        description="XMPP front door for legacy TLS clients: answers STARTTLS, terminates TLS 1.0-1.3 "
        "and relays to a plaintext Prosody on a new backend connection.",
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML settings; command-line flags override it")
    p.add_argument("--listen", action="append", metavar="HOST:PORT", help="STARTTLS listener (repeatable)")
    p.add_argument(
        "--direct-tls-listen", action="append", metavar="HOST:PORT", help="direct TLS listener, XEP-0368"
    )
    p.add_argument(
        "--backend", metavar="HOST:PORT", help=f"plaintext Prosody c2s (default {DEFAULT_BACKEND})"
    )
    p.add_argument("--cert", metavar="CERT.pem", help="default certificate chain (PEM)")
    p.add_argument("--key", metavar="KEY.pem", help="private key of --cert (PEM)")
    p.add_argument("--domain", action="append", metavar="DOMAIN", help="served XMPP domain (repeatable)")
    p.add_argument("--min-tls", choices=tuple(TLS_VERSIONS), help="lowest TLS version accepted (default 1.0)")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--loop", choices=LOOPS, help="event loop (default auto)")
    p.add_argument("--workers", type=int, metavar="N", help="processes sharing the listeners (default 1)")
    p.add_argument(
        "--metrics-listen", metavar="HOST:PORT", help="Prometheus endpoint, e.g. 127.0.0.1:9522 (off)"
    )
    p.add_argument("--send-proxy-protocol", choices=PROXY_PROTOCOLS, help="PROXY header to the backend (off)")
    p.add_argument(
        "--fingerprints", metavar="FILE", help="your own names for client fingerprints (docs/census.md)"
    )
    p.add_argument("--tls-routing", choices=TLS_ROUTINGS, help="who gets Prosody's own TLS (terminate-all)")
    p.add_argument(
        "--tls-backend", metavar="HOST:PORT", help=f"Prosody's direct-TLS port ({DEFAULT_TLS_BACKEND})"
    )
    p.add_argument("--tls-splice", choices=TLS_SPLICES, help="how --tls-backend is reached (direct-tls)")
    p.add_argument(
        "--check-config", action="store_true", help="validate everything and exit, without listening"
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


_TOP_KEYS: Final = {
    "listen", "direct_tls_listen", "backend", "domains", "min_tls", "cert", "key",
    "certificates", "limits", "log_level", "loop", "workers", "metrics_listen", "send_proxy_protocol",
    "tls", "fingerprints",
}  # fmt: skip


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config: {path}: file not found") from None
    except PermissionError:
        raise ConfigError(f"--config: {path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path}: invalid TOML: {exc}") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}")
    return data


def _limits(raw: object) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        raise ConfigError("limits: expected a table")
    known = {f.name: f for f in fields(Limits)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"limits: unknown key {name!r}")
        default = getattr(Limits(), name)
        key = f"limits.{name}"
        if name == "exempt_networks":
            values[name] = tuple(network(v, key) for v in string_list(value, key))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(default, int) and not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if value < 0 or (value == 0 and name not in _ZERO_MEANS_OFF):
            raise ConfigError(f"{key}: must be greater than 0, got {value!r}")
        if name == "ipv6_prefix" and not 32 <= value <= 128:
            raise ConfigError(f"{key}: must be from 32 to 128 (bits of an IPv6 network), got {value!r}")
        values[name] = float(value) if isinstance(default, float) else value
    return Limits(**values)


_JA3_RE: Final = re.compile(r"[0-9a-f]{32}\Z")


def _tls_policy(
    raw: object, routing_flag: str | None, backend_flag: str | None, splice_flag: str | None
) -> TlsPolicy:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("tls: expected a table")
    unknown = sorted(set(raw) - {f.name for f in fields(TlsPolicy)} - {"legacy_key"})
    if unknown:
        raise ConfigError(f"tls: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {}
    routing = routing_flag if routing_flag is not None else raw.get("routing")
    if routing is not None:
        values["routing"] = choice(routing, "tls.routing", TLS_ROUTINGS)
    backend = backend_flag if backend_flag is not None else raw.get("backend")
    if backend is not None:
        values["backend"] = parse_address(backend, "tls.backend")
    splice = splice_flag if splice_flag is not None else raw.get("splice")
    if splice is not None:
        values["splice"] = choice(splice, "tls.splice", TLS_SPLICES)
    if "legacy_networks" in raw:
        key = "tls.legacy_networks"
        values["legacy_networks"] = tuple(network(v, key) for v in string_list(raw["legacy_networks"], key))
    if "legacy_ja3" in raw:
        hashes = [v.strip().lower() for v in string_list(raw["legacy_ja3"], "tls.legacy_ja3")]
        bad = [h for h in hashes if not _JA3_RE.match(h)]
        if bad:
            raise ConfigError(f"tls.legacy_ja3: {bad[0]!r} is not a JA3 hash (32 hex digits)")
        values["legacy_ja3"] = frozenset(hashes)
    if "legacy_plain_rsa" in raw:
        plain_rsa = raw["legacy_plain_rsa"]
        if not isinstance(plain_rsa, bool):
            raise ConfigError(f"tls.legacy_plain_rsa: expected true or false, got {plain_rsa!r}")
        values["legacy_plain_rsa"] = plain_rsa
    if "expiry_warning_days" in raw:
        days = raw["expiry_warning_days"]
        if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 3650:
            raise ConfigError(f"tls.expiry_warning_days: expected a number of days, 0-3650, got {days!r}")
        values["expiry_warning_days"] = days
    if "legacy_cert" in raw or "legacy_key" in raw:
        if "legacy_cert" not in raw or "legacy_key" not in raw:
            raise ConfigError("tls.legacy_cert and tls.legacy_key: set both, or neither")
        values["legacy_cert"] = _cert_choice(raw["legacy_cert"], raw["legacy_key"], "tls.legacy")
    return TlsPolicy(**values)


def _workers(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise ConfigError(f"workers: expected a whole number from 1 to 64, got {value!r}")
    return value


def _certificates(raw: object) -> dict[str, CertChoice]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("certificates: expected a table of domain = { cert, key }")
    out: dict[str, CertChoice] = {}
    for name, entry in raw.items():
        domain = normalize_domain(name, f"certificates.{name!r}")
        key = f"certificates.{name!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: expected a table with cert and key")
        unknown = sorted(set(entry) - {"cert", "key"})
        if unknown:
            raise ConfigError(f"{key}: unknown key {unknown[0]!r}")
        if "cert" not in entry or "key" not in entry:
            raise ConfigError(f"{key}: needs both cert and key")
        out[domain] = _cert_choice(entry["cert"], entry["key"], key)
    return out


def _cert_choice(cert_raw: object, key_raw: object, where: str) -> CertChoice:
    """``cert``/``key`` as two paths, or two lists of paths: one certificate per key type."""
    prefix = f"{where}." if where else ""
    if isinstance(cert_raw, str) and isinstance(key_raw, str):
        return CertPair(file_path(cert_raw, f"{prefix}cert"), file_path(key_raw, f"{prefix}key"))
    certs = string_list(cert_raw, f"{prefix}cert")
    keys = string_list(key_raw, f"{prefix}key")
    if not 1 <= len(certs) <= 2 or len(certs) != len(keys):
        raise ConfigError(
            f"{prefix}cert and {prefix}key: one path each, or two lists of the same length "
            "(at most two: one RSA and one ECDSA certificate)"
        )
    pairs = tuple(
        CertPair(file_path(c, f"{prefix}cert"), file_path(k, f"{prefix}key"))
        for c, k in zip(certs, keys, strict=True)
    )
    return pairs[0] if len(pairs) == 1 else pairs


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Merge the TOML file (if any) with command-line flags and validate the result."""
    config_file = Path(args.config) if args.config else None
    data = load_toml(config_file) if config_file else {}

    def pick(flag: object, key: str, default: object = None) -> object:
        return flag if flag is not None else data.get(key, default)

    listen_raw = (
        args.listen if args.listen else string_list(data.get("listen", list(DEFAULT_LISTEN)), "listen")
    )
    direct_raw = (
        args.direct_tls_listen
        if args.direct_tls_listen
        else string_list(data.get("direct_tls_listen", []), "direct_tls_listen")
    )
    listen = tuple(parse_address(v, "listen") for v in listen_raw)
    direct = tuple(parse_address(v, "direct_tls_listen") for v in direct_raw)
    if not listen and not direct:
        raise ConfigError("listen: at least one listener is needed")
    if len(set(listen + direct)) != len(listen) + len(direct):
        raise ConfigError("listen: the same address is listed twice")
    backend = parse_address(pick(args.backend, "backend", DEFAULT_BACKEND), "backend")

    domains_raw = args.domain if args.domain else string_list(data.get("domains", []), "domains")
    domains = tuple(dict.fromkeys(normalize_domain(d, "domains") for d in domains_raw))
    if not domains:
        raise ConfigError("domains: at least one domain is needed (--domain or domains = [...])")

    certificates = _certificates(data.get("certificates"))
    cert_raw, key_raw = pick(args.cert, "cert"), pick(args.key, "key")
    if cert_raw is None and key_raw is None and len(certificates) > 0:
        first = certificates.get(domains[0]) or next(iter(certificates.values()))
        cert_pair = first
    else:
        if cert_raw is None:
            raise ConfigError("cert: a certificate is needed (--cert or cert = ...)")
        if key_raw is None:
            raise ConfigError("key: a private key is needed (--key or key = ...)")
        cert_pair = _cert_choice(cert_raw, key_raw, "")
    stray = sorted(set(certificates) - set(domains))
    if stray:
        raise ConfigError(f"certificates.{stray[0]!r}: not one of the served domains")

    tls = _tls_policy(data.get("tls"), args.tls_routing, args.tls_backend, args.tls_splice)
    min_tls = choice(pick(args.min_tls, "min_tls", "1.0"), "min_tls", tuple(TLS_VERSIONS))
    if tls.legacy_cert is not None and TLS_VERSIONS[min_tls] >= TLS_VERSIONS["1.2"]:
        raise ConfigError(f"tls.legacy_cert: no legacy client gets through with min_tls = {min_tls!r}")
    if tls.routing != "terminate-all" and tls.backend == backend:
        raise ConfigError(
            "tls.backend: must be Prosody's port for spliced clients, not the plaintext backend "
            + str(backend)
        )
    return Settings(
        listen=listen,
        direct_tls_listen=direct,
        backend=backend,
        domains=domains,
        min_tls=min_tls,
        cert=cert_pair,
        certificates=certificates,
        limits=_limits(data.get("limits")),
        log_level=choice(pick(args.log_level, "log_level", "info"), "log_level", LOG_LEVELS),
        loop=choice(pick(args.loop, "loop", "auto"), "loop", LOOPS),
        workers=_workers(pick(args.workers, "workers", 1)),
        metrics_listen=optional_address(pick(args.metrics_listen, "metrics_listen", ""), "metrics_listen"),
        send_proxy_protocol=choice(
            pick(args.send_proxy_protocol, "send_proxy_protocol", "off"),
            "send_proxy_protocol",
            PROXY_PROTOCOLS,
        ),
        tls=tls,
        config_file=config_file,
        fingerprints=optional_path(pick(args.fingerprints, "fingerprints", ""), "fingerprints"),
    )
