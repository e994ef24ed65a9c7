#!/usr/bin/env bash
# Optional: writes .env from .env.example with fresh random secrets, for people who want their own .env
# (without one the stack generates its secrets at the first `up`). Leaves an existing .env alone.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f .env ]; then
  echo ".env exists; leaving it as it is"
  exit 0
fi
random_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
sed -e "s/^POSTGRES_PASSWORD=\$/POSTGRES_PASSWORD=$(random_secret)/" \
    -e "s/^MINIO_ROOT_PASSWORD=\$/MINIO_ROOT_PASSWORD=$(random_secret)/" \
    -e "s/^MLFLOW_AUTH_ADMIN_PASSWORD=\$/MLFLOW_AUTH_ADMIN_PASSWORD=$(random_secret)/" \
    -e "s/^MLFLOW_FLASK_SERVER_SECRET_KEY=\$/MLFLOW_FLASK_SERVER_SECRET_KEY=$(random_secret)/" \
    .env.example > .env
chmod 600 .env
echo "wrote .env with random secrets (POSTGRES_PASSWORD, MINIO_ROOT_PASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY)"
