#!/usr/bin/env bash
# Writes backups/<UTC timestamp>/ with a Postgres dump (runs, metrics, registry, aliases) and a tar of the
# artifact bucket (models, plots). The stack must be running; it keeps serving during the backup.
#   scripts/backup.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-backups/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$target"
started=$(date +%s)
# Custom format: compressed, and pg_restore can clean and recreate objects from it.
docker compose exec -T postgres sh -c 'pg_dump -U "$POSTGRES_USER" -d "$POSTGRES_DB" --format=custom' \
  > "$target/postgres.dump"
# With logins on (MLFLOW_AUTH=basic; always in team mode) users and permissions live in their own database.
has_auth_db='psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "SELECT 1 FROM pg_database WHERE datname = '"'mlflow_auth'"'"'
if [ "$(docker compose exec -T postgres sh -c "$has_auth_db")" = 1 ]; then
  docker compose exec -T postgres sh -c 'pg_dump -U "$POSTGRES_USER" -d mlflow_auth --format=custom' > "$target/auth.dump"
fi
docker compose exec -T tracking-server bucket-archive export > "$target/artifacts.tar"
echo "backup written to $target ($(du -sh "$target" | cut -f1), $(( $(date +%s) - started )) s)"
