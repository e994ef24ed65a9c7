#!/usr/bin/env bash
# Team mode's server certificate (MLFLOW_TLS=on). Each command changes the `tls` volume, then restarts only
# the gateway, the one container holding the certificate (about a second; MLflow clients retry through it).
#   scripts/tls.sh show     the certificate the gateway serves: names, issuer, expiry, SHA-256 fingerprint
#   scripts/tls.sh renew    a new server certificate from the stack's own CA (clients keep their certs/ca.crt)
#   scripts/tls.sh reload   after replacing the files MLFLOW_TLS_CERT / MLFLOW_TLS_KEY name, or changing
#                           MLFLOW_PUBLIC_NAMES: check and install them
set -euo pipefail
cd "$(dirname "$0")/.."

in_tls() { docker compose run --rm --no-deps -T tls "$@"; }

case "${1:-show}" in
  show) in_tls show ;;
  renew) in_tls renew && docker compose restart gateway ;;
  reload) in_tls init && docker compose restart gateway ;;
  *) echo "usage: scripts/tls.sh show | renew | reload" >&2; exit 2 ;;
esac
