#!/usr/bin/env bash
# Restores a backup written by scripts/backup.sh into the running stack, replacing what it holds:
#   scripts/restore.sh backups/<timestamp>
# The tracking server is stopped meanwhile, so nothing writes half-way; starting it runs
# tracking-server-prepare first, which migrates the schema, so a backup from an older MLflow restores too.
set -euo pipefail
cd "$(dirname "$0")/.."

source=${1:?usage: scripts/restore.sh backups/<timestamp>}
for file in postgres.dump artifacts.tar; do
  [ -s "$source/$file" ] || { echo "restore: $source/$file is missing or empty" >&2; exit 2; }
done
started=$(date +%s)
# The artifact store: seaweedfs when docker-compose.seaweedfs.yml is in COMPOSE_FILE, else minio.
services=$(docker compose config --services)
store=minio
if grep -qx seaweedfs <<<"$services"; then store=seaweedfs; fi
docker compose up -d --wait postgres "$store"
docker compose stop tracking-server
docker compose exec -T postgres sh -c \
  'pg_restore -U "$POSTGRES_USER" -d "$POSTGRES_DB" --clean --if-exists --no-owner --exit-on-error' \
  < "$source/postgres.dump"
if [ -s "$source/auth.dump" ]; then
  # Users and permissions (a backup taken with logins on). The admin's password becomes the backup's.
  docker compose exec -T postgres sh -c \
    'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "SELECT 1 FROM pg_database WHERE datname = '"'mlflow_auth'"'" | grep -q 1 || createdb -U "$POSTGRES_USER" mlflow_auth'
  docker compose exec -T postgres sh -c \
    'pg_restore -U "$POSTGRES_USER" -d mlflow_auth --clean --if-exists --no-owner --exit-on-error' < "$source/auth.dump"
fi
docker compose run --rm -T --no-deps --entrypoint bucket-archive tracking-server import \
  < "$source/artifacts.tar"
docker compose up -d --wait tracking-server
echo "restored $source in $(( $(date +%s) - started )) s"
