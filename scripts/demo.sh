#!/usr/bin/env bash
# `make demo` / `make demo-clean`: a local systemd Debian container plays "the server".
#
#   scripts/demo.sh up      create/start container bbproxy-demo, run
#                           `ansible-playbook -i inventory/demo site.yml` against it, then show a
#                           TLS 1.0 login through the proxy and what an operator checks
#   scripts/demo.sh show    only the last part, on an already provisioned container
#   scripts/demo.sh clean   remove the container
#
# Safe to re-run: an existing container is reused and the playbook reports changed=0 the second
# time. The proxy's ports are published on the host's loopback only: 127.0.0.1:$DEMO_PORT (STARTTLS,
# 5222 inside) and 127.0.0.1:$DEMO_DIRECT_TLS_PORT (direct TLS, 5223 inside). Nothing listens on
# the host's public addresses. Run from the Makefile (it puts .venv/bin on PATH) or with that PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

name=bbproxy-demo
image=localhost/bbproxy-debian:bookworm
port=${DEMO_PORT:-15222}
direct_tls_port=${DEMO_DIRECT_TLS_PORT:-15223}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/molecule/image/containers.conf}
export ANSIBLE_CONFIG=${ANSIBLE_CONFIG:-$PWD/ansible.cfg}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
in_container() { podman exec "$name" "$@"; }
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

port_free() {
  python3 -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

start_container() {
  if podman container exists "$name"; then
    if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then
      step "starting the existing container $name"
      podman start "$name" >/dev/null
    else
      step "reusing the running container $name"
    fi
  else
    podman image exists "$image" || die "image $image missing: run make image"
    for p in "$port" "$direct_tls_port"; do
      port_free "$p" || die "127.0.0.1:$p is taken; pick free ports: make demo DEMO_PORT=... DEMO_DIRECT_TLS_PORT=..."
    done
    step "creating container $name from $image (systemd inside, ports on 127.0.0.1 only)"
    podman run --detach --name "$name" --hostname "$name" \
      --privileged --systemd=always \
      --publish "127.0.0.1:$port:5222/tcp" --publish "127.0.0.1:$direct_tls_port:5223/tcp" \
      "$image" /lib/systemd/systemd >/dev/null
  fi
  # The container may come from an earlier run with other ports: ask podman, not the variables.
  port=$(podman port "$name" 5222/tcp | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' | head -1)
  direct_tls_port=$(podman port "$name" 5223/tcp | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' | head -1)
  [ -n "$port" ] || die "container $name publishes no 5222 on 127.0.0.1; run make demo-clean first"
  # Right after the start systemd's bus is not up yet and `--wait` fails at once: poll, bounded.
  local state="" tries=0
  while [ $tries -lt 90 ]; do
    state=$(podman exec "$name" systemctl is-system-running 2>/dev/null || true)
    case $state in
      running | degraded) return 0 ;;
    esac
    tries=$((tries + 1))
    sleep 1
  done
  die "systemd in $name did not come up within 90 s (state: ${state:-none})"
}

# Domain and the first two users of the demo inventory, as shell assignments.
demo_vars() {
  ansible-inventory -i inventory/demo --host "$name" | python3 -c '
import json, shlex, sys
v = json.load(sys.stdin)
users = v.get("bbproxy_prosody_users", [])
if not v.get("bbproxy_domains") or len(users) < 2:
    sys.exit("inventory/demo must set bbproxy_domains and two bbproxy_prosody_users")
print("domain=" + shlex.quote(v["bbproxy_domains"][0]))
for i, u in enumerate(users[:2]):
    print("user{0}={1} password{0}={2}".format(i, shlex.quote(u["name"]), shlex.quote(u["password"])))
print("direct_tls=" + ("yes" if v.get("bbproxy_direct_tls_enabled") else "no"))
'
}

show() {
  local domain user0 password0 user1 password1 direct_tls
  eval "$(demo_vars)"

  step "services"
  in_container systemctl is-active prosody bbproxy | paste -sd' ' | sed 's/^/prosody, bbproxy: /'

  step "versions"
  local proxy_bin
  proxy_bin=$(in_container systemctl show -p ExecStart bbproxy | sed -n 's/.*path=\([^ ;]*\).*/\1/p')
  in_container sh -c ". /etc/os-release; echo \"\$PRETTY_NAME\"; dpkg-query -W -f='\${Package} \${Version}\n' prosody openssl"
  in_container "$(dirname "$proxy_bin")/python" -c \
    'import importlib.metadata as m, ssl, sys; print("bbproxy", m.version("bbproxy"), "on Python", sys.version.split()[0], "/", ssl.OPENSSL_VERSION)'

  step "listening sockets (5222/5223: proxy on all addresses; 522: Prosody, loopback only)"
  in_container ss -Hltnp '( sport = :5222 or sport = :5223 or sport = :522 )' | awk '{print $4, $6}' | sort

  step "firewall: ufw status verbose"
  in_container ufw status verbose

  # The demo's certificate is self-signed: it is its own CA for both clients below.
  local cafile cert
  cafile=$workdir/served-cert.pem
  cert=$(in_container python3 -c 'import tomllib; print(tomllib.load(open("/etc/bbproxy/bbproxy.toml", "rb"))["cert"])')
  in_container cat "$cert" >"$cafile"

  step "TLS 1.0 handshake from inside the container: openssl s_client -starttls xmpp -tls1"
  in_container sh -c "openssl s_client -connect 127.0.0.1:5222 -starttls xmpp -xmpphost '$domain' \
    -tls1 -cipher 'DEFAULT:@SECLEVEL=0' -CAfile '$cert' -verify_hostname '$domain' -brief </dev/null 2>&1" \
    | grep -E 'Protocol|Ciphersuite|Peer certificate|Verification|error' || die "the TLS 1.0 handshake failed"

  step "TLS 1.0 login from the host through 127.0.0.1:$port: $user0 and $user1 log in, $user0 sends $user1 a message"
  XMPP_CHECK_PASSWORD=$password0 XMPP_CHECK_PEER_PASSWORD=$password1 \
    python tools/xmpp_login_check.py --host 127.0.0.1 --port "$port" --domain "$domain" --tls 1.0 \
    --user "$user0" --peer "$user1" --cafile "$cafile" || die "the TLS 1.0 login failed"

  step "done"
  cat <<EOF
The demo server is container '$name' (Debian 12, systemd). Try it yourself:
  XMPP STARTTLS:  127.0.0.1:$port  (domain $domain, users $user0 / $user1, passwords in inventory/demo)
EOF
  if [ "$direct_tls" = yes ] && [ -n "$direct_tls_port" ]; then
    echo "  direct TLS:     127.0.0.1:$direct_tls_port"
  fi
  cat <<EOF
  a shell:        podman exec -it $name bash     (CONTAINERS_CONF=$CONTAINERS_CONF)
  re-provision:   make demo                      (idempotent: changed=0)
  remove:         make demo-clean
EOF
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (privileged systemd container with its own firewall): sudo make demo"
  [ -f site.yml ] && [ -d inventory/demo ] || die "site.yml or inventory/demo missing"
  start_container
  step "ansible-playbook -i inventory/demo site.yml"
  ansible-playbook -i inventory/demo site.yml
  show
}

clean() {
  if podman container exists "$name"; then
    podman rm --force --time 10 "$name" >/dev/null
    echo "demo: removed container $name"
  else
    echo "demo: no container $name"
  fi
}

case ${1:-up} in
  up) up ;;
  show) show ;;
  clean) clean ;;
  *) die "usage: $0 up|show|clean" ;;
esac
