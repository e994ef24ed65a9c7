#!/usr/bin/env bash
# Moves the stack's artifacts from MinIO to SeaweedFS and switches the stack over (`make migrate-objects
# TARGET=seaweedfs`; docs/object-stores.md):
#   1. starts SeaweedFS next to MinIO (docker-compose.seaweedfs.yml, MinIO under its `minio` profile) and stops
#      the tracking server, so nothing writes to the bucket meanwhile;
#   2. copies the bucket with bucket-copy, which reads every object back from SeaweedFS and compares SHA-256s;
#   3. only if every object matched: writes COMPOSE_FILE into .env, starts the stack on SeaweedFS, stops MinIO.
# MinIO's volume is kept (going back: docs/object-stores.md). Any failure leaves .env untouched and the stack
# on MinIO (started again). Runs and models live in Postgres, which is not touched.
#   scripts/migrate-objects.sh seaweedfs
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-}
[ "$target" = seaweedfs ] || { echo "migrate-objects: TARGET must be seaweedfs (another S3 endpoint: bucket-copy, docs/object-stores.md)" >&2; exit 2; }
overlay=docker-compose.seaweedfs.yml
services=$(docker compose config --services)  # whole, then searched: `grep -q` in a pipe could cut it short
if grep -qx seaweedfs <<<"$services"; then
  echo "migrate-objects: the stack already runs on SeaweedFS (COMPOSE_FILE names $overlay)" >&2
  exit 2
fi
# The files compose reads now (COMPOSE_FILE from .env or the environment, else its defaults), plus SeaweedFS's.
current=${COMPOSE_FILE:-}
if [ -z "$current" ] && [ -f .env ]; then current=$(sed -n 's/^COMPOSE_FILE=//p' .env | tail -n 1); fi
if [ -z "$current" ]; then
  current=docker-compose.yml
  [ -f docker-compose.override.yml ] && current=$current:docker-compose.override.yml
fi
after=$current:$overlay
# Extra files for this run only (CI adds its stand-in's healthcheck); not written into .env.
during=$after${MIGRATE_EXTRA_COMPOSE_FILES:+:$MIGRATE_EXTRA_COMPOSE_FILES}
both() { COMPOSE_FILE=$during COMPOSE_PROFILES=minio docker compose "$@"; }

started=$(date +%s)
back_on_minio() { echo "migrate-objects: failed; the stack stays on MinIO (.env unchanged)" >&2; docker compose up -d --wait >&2 || true; }
trap back_on_minio ERR
docker compose stop tracking-server
both up -d --wait postgres minio seaweedfs
# A one-off server container (no serving process) whose source is MinIO, on the backend network of both.
both run --rm -T --no-deps -e MLFLOW_S3_ENDPOINT_URL=http://minio:9000 --entrypoint bucket-copy \
  tracking-server --to http://seaweedfs:8333
# Every object arrived whole: from here on the stack's S3 is SeaweedFS.
if [ -f .env ] && grep -q '^COMPOSE_FILE=' .env; then
  sed -i "s|^COMPOSE_FILE=.*|COMPOSE_FILE=$after|" .env
else
  printf '# The artifact store is SeaweedFS (scripts/migrate-objects.sh; docs/object-stores.md).\nCOMPOSE_FILE=%s\n' "$after" >>.env
  chmod 600 .env
fi
trap - ERR
COMPOSE_FILE=$during docker compose up -d --wait
both stop minio
echo "migrate-objects: the stack now runs on SeaweedFS ($(( $(date +%s) - started )) s); MinIO's volume is kept"
if [ -n "${COMPOSE_FILE:-}" ]; then
  # A COMPOSE_FILE in the environment wins over .env's in every later command.
  echo "migrate-objects: COMPOSE_FILE is set in your environment; set it to $after (or unset it)" >&2
fi
