#!/usr/bin/env bash
# Scan a local bbproxy STARTTLS listener with testssl.sh and check the result against the TLS
# policy (docs/security.md). Loopback only, bounded in time, nothing left running.
#
#   tools/security_scan.sh [--quick] OUTDIR
#
# For each key type (RSA 2048, ECDSA P-256) the script makes a throwaway self-signed
# certificate for example.test, starts the proxy from this tree (files/bbproxy/src) on a free
# 127.0.0.1 port, runs
#
#   testssl --starttls xmpp --xmpphost example.test --full 127.0.0.1:PORT
#
# (--quick: -p -s -f -P -U instead of --full, about half the time), stops the proxy by its PID
# and checks the JSON against the policy: no SSLv2/SSLv3, no NULL/aNULL/EXPORT/LOW/3DES/RC4,
# TLS 1.0 offered with ECDHE AES-CBC-SHA suites only, secure renegotiation, no client-initiated
# renegotiation, no compression (CRIME), not vulnerable to Heartbleed, CCS, ROBOT, POODLE,
# SWEET32, FREAK, DROWN, LOGJAM. Exit 0 when every check passes, 1 when one fails, 2 on a usage
# or set-up error.
#
# OUTDIR receives, per key type: testssl-KEY.log (the human report), testssl-KEY.json (flat
# JSON), proxy-KEY.log, and one summary.md with the checks of both runs.
#
# Environment: PYTHON (default .venv/bin/python, else python3), TESTSSL (default testssl or
# testssl.sh from PATH; Debian package testssl.sh), SCAN_TIMEOUT (seconds per testssl run,
# default 600), KEY_TYPES (default "rsa ecdsa"), SCAN_PROXY_CONFIG (a TOML file passed to the
# proxy with --config, e.g. to scan tls.legacy_plain_rsa).

set -euo pipefail

usage() {
  echo "usage: $0 [--quick] OUTDIR" >&2
  exit 2
}

quick=0
if [[ ${1:-} == --quick ]]; then
  quick=1
  shift
fi
[[ $# -eq 1 && -n $1 ]] || usage
outdir=$1

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
domain=example.test
loopback=127.0.0.1
scan_timeout=${SCAN_TIMEOUT:-600}
key_types=${KEY_TYPES:-rsa ecdsa}
python=${PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then python=$repo/.venv/bin/python; else python=python3; fi
fi
testssl=${TESTSSL:-}
if [[ -z $testssl ]]; then
  testssl=$(command -v testssl || command -v testssl.sh || true)
fi
[[ -n $testssl ]] || { echo "testssl not found: apt-get install testssl.sh" >&2; exit 2; }
command -v openssl >/dev/null || { echo "openssl not found: apt-get install openssl" >&2; exit 2; }
command -v timeout >/dev/null || { echo "timeout (coreutils) not found" >&2; exit 2; }
if [[ -n ${SCAN_PROXY_CONFIG:-} && ! -r $SCAN_PROXY_CONFIG ]]; then
  echo "SCAN_PROXY_CONFIG=$SCAN_PROXY_CONFIG is not readable" >&2
  exit 2
fi

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d -t bbproxy-scan.XXXXXX)
proxy_pid=""

stop_proxy() {
  if [[ -n $proxy_pid ]] && kill -0 "$proxy_pid" 2>/dev/null; then
    kill -TERM "$proxy_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$proxy_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
  fi
  proxy_pid=""
}

cleanup() {
  stop_proxy
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

make_cert() {  # make_cert rsa|ecdsa -> $work/KEY.crt, $work/KEY.key
  local kind=$1 keyopt
  case $kind in
    rsa) keyopt=(-newkey rsa:2048) ;;
    ecdsa) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    *) echo "unknown key type: $kind (rsa or ecdsa)" >&2; exit 2 ;;
  esac
  openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj "/CN=$domain" \
    -addext "subjectAltName=DNS:$domain" \
    -keyout "$work/$kind.key" -out "$work/$kind.crt" 2>/dev/null
}

start_proxy() {  # start_proxy KEY PORT: proxy in front of an unused backend port
  local kind=$1 port=$2 backend_port log
  backend_port=$(free_port)
  log=$outdir/proxy-$kind.log
  local args=(--listen "$loopback:$port" --backend "$loopback:$backend_port"
    --cert "$work/$kind.crt" --key "$work/$kind.key" --domain "$domain" --log-level info)
  [[ -n ${SCAN_PROXY_CONFIG:-} ]] && args+=(--config "$SCAN_PROXY_CONFIG")
  PYTHONPATH=$repo/files/bbproxy/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 \
    "$python" -m bbproxy "${args[@]}" >"$log" 2>&1 </dev/null &
  proxy_pid=$!
  for _ in $(seq 1 150); do
    grep -q ' ready' "$log" 2>/dev/null && return 0
    kill -0 "$proxy_pid" 2>/dev/null || { echo "proxy exited during start-up:" >&2; cat "$log" >&2; exit 2; }
    sleep 0.1
  done
  echo "proxy not ready within 15 s:" >&2
  cat "$log" >&2
  exit 2
}

if [[ $quick -eq 1 ]]; then
  checks=(-p -s -f -P -U)
else
  checks=(--full)
fi

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo" status --porcelain -- files/bbproxy/src 2>/dev/null) ]]; then
  commit="$commit (files/bbproxy/src modified)"
fi

for kind in $key_types; do
  make_cert "$kind"
  port=$(free_port)
  start_proxy "$kind" "$port"
  rm -f "$outdir/testssl-$kind.log" "$outdir/testssl-$kind.json"
  echo "--- testssl ${checks[*]} against $loopback:$port ($kind certificate)"
  status=0
  timeout --kill-after=10 "$scan_timeout" "$testssl" --quiet --color 0 --warnings off \
    --connect-timeout 10 --openssl-timeout 10 \
    --logfile "$outdir/testssl-$kind.log" --jsonfile "$outdir/testssl-$kind.json" \
    "${checks[@]}" --starttls xmpp --xmpphost "$domain" "$loopback:$port" >/dev/null 2>&1 || status=$?
  # testssl's exit status counts findings; only a timeout (124/137) or no JSON is an error.
  if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "testssl did not finish within ${scan_timeout}s" >&2
    exit 1
  fi
  [[ -s $outdir/testssl-$kind.json ]] || { echo "testssl wrote no JSON (exit $status)" >&2; exit 1; }
  stop_proxy
  grep -q Traceback "$outdir/proxy-$kind.log" && { echo "traceback in proxy-$kind.log" >&2; exit 1; }
done

# The policy, checked on testssl's flat JSON (ids as of testssl 3.0).
# shellcheck disable=SC2086 # key_types is a word list on purpose
"$python" - "$outdir" "$commit" "$testssl" "${checks[*]}" $key_types <<'PY'
import json
import pathlib
import re
import subprocess
import sys

outdir, commit, testssl, checks, *kinds = sys.argv[1:]
out = pathlib.Path(outdir)
version = subprocess.run([testssl, "--version"], capture_output=True, text=True, check=False).stdout
match = re.search(r"testssl(?:\.sh)?\s+(\d+\.\d+(\.\d+)?\S*)", re.sub(r"\x1b\[[0-9;]*m", "", version))
version = f"testssl.sh {match.group(1)}" if match else "testssl.sh (version unknown)"

LEGACY_OK = {"ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"}
NOT_OFFERED = {
    "SSLv2": "SSLv2 not offered",
    "SSLv3": "SSLv3 not offered",
    "cipherlist_NULL": "no NULL suites",
    "cipherlist_aNULL": "no anonymous suites",
    "cipherlist_EXPORT": "no EXPORT suites",
    "cipherlist_LOW": "no DES/RC2/RC4 (LOW) suites",
    "cipherlist_3DES_IDEA": "no 3DES/IDEA suites",
}
NOT_VULNERABLE = {
    "heartbleed": "Heartbleed",
    "CCS": "CCS injection",
    "ROBOT": "ROBOT",
    "secure_client_renego": "client-initiated renegotiation",
    "CRIME_TLS": "TLS compression (CRIME)",
    "POODLE_SSL": "POODLE (SSLv3)",
    "SWEET32": "SWEET32",
    "FREAK": "FREAK",
    "DROWN": "DROWN",
    "LOGJAM": "LOGJAM",
    "RC4": "RC4",
}

rows, failed = [], False


def check(kind, what, ok, finding):
    global failed
    failed |= not ok
    rows.append(f"| {kind} | {what} | {'pass' if ok else 'FAIL'} | {finding} |")


for kind in kinds:
    findings = {}
    for item in json.loads((out / f"testssl-{kind}.json").read_text()):
        findings.setdefault(item["id"], item)

    def get(ident):
        item = findings.get(ident)
        return (item["severity"], item["finding"]) if item else ("MISSING", "not in the report")

    for ident, what in NOT_OFFERED.items():
        sev, text = get(ident)
        check(kind, what, text.startswith("not offered"), f"{ident}: {text}")
    for ident, what in NOT_VULNERABLE.items():
        sev, text = get(ident)
        check(kind, f"not vulnerable: {what}", sev == "OK", f"{ident}: {sev} {text}")
    sev, text = get("secure_renego")
    check(kind, "secure renegotiation (RFC 5746)", text.startswith("supported"), f"secure_renego: {text}")
    sev, text = get("fallback_SCSV")
    check(kind, "TLS_FALLBACK_SCSV honoured", text.startswith("supported"), f"fallback_SCSV: {text}")
    sev, text = get("TLS1")
    check(kind, "TLS 1.0 offered (the legacy clients)", text.startswith("offered"), f"TLS1: {text}")
    sev, text = get("TLS1_3")
    check(kind, "TLS 1.3 offered", text.startswith("offered"), f"TLS1_3: {text}")
    for proto, label in (("TLSv1", "TLS 1.0"), ("TLSv1_1", "TLS 1.1")):
        sev, text = get(f"cipherorder_{proto}")
        suites = set(text.split()) if sev != "MISSING" else set()
        ok = bool(suites) and suites <= LEGACY_OK
        check(kind, f"{label} suites: ECDHE AES-CBC-SHA only", ok, f"cipherorder_{proto}: {text}")
    for proto in ("TLSv1_2", "TLSv1_3"):
        sev, text = get(f"cipherorder_{proto}")
        rows.append(f"| {kind} | suites {proto} (server order) | info | {text} |")

summary = out / "summary.md"
summary.write_text(
    f"# testssl policy check\n\nbbproxy {commit}; {version}; checks: {checks}; "
    f"STARTTLS (XMPP, to=example.test) on 127.0.0.1\n\n"
    "| key | check | result | finding |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
)
print(summary.read_text())
print("policy check:", "FAILED" if failed else "passed")
sys.exit(1 if failed else 0)
PY
