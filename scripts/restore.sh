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
docker compose up -d --wait postgres minio
docker compose stop tracking-server
docker compose exec -T postgres sh -c \
  'pg_restore -U "$POSTGRES_USER" -d "$POSTGRES_DB" --clean --if-exists --no-owner --exit-on-error' \
  < "$source/postgres.dump"
docker compose run --rm -T --no-deps --entrypoint python tracking-server /usr/local/bin/bucket-archive import \
  < "$source/artifacts.tar"
docker compose up -d --wait tracking-server
echo "restored $source in $(( $(date +%s) - started )) s"
