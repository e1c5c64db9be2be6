#!/usr/bin/env bash
# Installs the system programs the fleet, the tests and the benchmarks use, from Debian's
# packages, when they are missing: redis-server, ab (apache2-utils), wrk, caddy (for `make bench-caddy`),
# nginx and haproxy (the anchors of `make bench-hop`, which runs its own instances from private
# configs; where an init system runs, Debian also starts their default services on install: the
# benchmark neither needs nor touches those), and postgresql (the auth servers' store when
# Auth_store is postgresql://...; the tests start their own clusters, never the packaged one).
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v ab >/dev/null || missing+=(apache2-utils)
command -v wrk >/dev/null || missing+=(wrk)
command -v caddy >/dev/null || missing+=(caddy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v postgres >/dev/null \
  || missing+=(postgresql)
# the simulated hosts of the multi-host test and bench-hosts (network namespaces, setpriv)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v prometheus >/dev/null || missing+=(prometheus)   # the metrics e2e test (issue 12)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    echo "missing: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "installing ${missing[*]} with apt-get" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
