#!/usr/bin/env bash
# The stack's secrets, generated at the first `docker compose up` into the `secrets` volume:
#   scripts/secrets.sh [show [NAME]]           print them (`make secrets`), e.g. the MinIO console login
#   scripts/secrets.sh rotate NAME             a new random value, given to whatever reads it, which restarts
#   scripts/secrets.sh reset-postgres-password give the database the password the volume holds (after the
#                                              secrets volume was lost next to a kept postgres-data volume)
# NAME: postgres_password, minio_root_password, mlflow_auth_admin_password, mlflow_flask_server_secret_key
# (minio_root_user is shown too). A secret set in .env is managed there: edit .env and `docker compose up -d`.
set -euo pipefail
cd "$(dirname "$0")/.."

in_volume() { docker compose run --rm --no-deps -T secrets "$@"; }
value_of() { in_volume show "$1" | sed "s/^$1=//"; }

reset_postgres_password() {
  docker compose up -d --wait postgres
  # Over the container's local socket, which trusts its own superuser: no old password is needed.
  docker compose exec -T postgres sh -c \
    'psql -v ON_ERROR_STOP=1 -q -U "$POSTGRES_USER" -d postgres -v role="$POSTGRES_USER" -v pw="$(cat /run/secrets/postgres_password)"' \
    <<'SQL'
ALTER ROLE :"role" PASSWORD :'pw';
SQL
  echo "secrets: the database now uses the password in the secrets volume"
}

refuse_if_set_in_env() {
  local variable=$1
  if [ -n "${!variable:-}" ] || grep -qs "^${variable}=." .env; then
    echo "secrets: $variable is set in .env (or the environment), which wins over the volume: change it there" >&2
    exit 2
  fi
}

rotate() {
  local name=${1:?usage: scripts/secrets.sh rotate NAME}
  case "$name" in
    postgres_password)
      refuse_if_set_in_env POSTGRES_PASSWORD
      in_volume set postgres_password </dev/null
      reset_postgres_password
      docker compose restart tracking-server
      ;;
    minio_root_password)
      refuse_if_set_in_env MINIO_ROOT_PASSWORD
      in_volume set minio_root_password </dev/null
      # The stack's S3 key pair, whichever store serves it (docker-compose.seaweedfs.yml reads it too).
      local services store=minio
      services=$(docker compose config --services)
      if grep -qx seaweedfs <<<"$services"; then store=seaweedfs; fi
      docker compose restart "$store" tracking-server
      ;;
    mlflow_flask_server_secret_key)
      refuse_if_set_in_env MLFLOW_FLASK_SERVER_SECRET_KEY
      in_volume set mlflow_flask_server_secret_key </dev/null
      docker compose restart tracking-server  # signed sessions (the sign-up form's) end
      ;;
    mlflow_auth_admin_password)
      refuse_if_set_in_env MLFLOW_AUTH_ADMIN_PASSWORD
      local old new
      old=$(value_of mlflow_auth_admin_password)
      new=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
      if [ "$(docker compose exec -T tracking-server printenv MLFLOW_AUTH)" = basic ]; then
        # The admin exists in the auth database with the old password: change it there through MLflow's API.
        printf '%s\n%s\n' "$old" "$new" | docker compose exec -T tracking-server python -c '
import sys, requests
from mlflow_stack_server.settings import Settings
old, new = sys.stdin.read().splitlines()
user = Settings.from_environment().admin[0]
answer = requests.patch("http://localhost:5000/api/2.0/mlflow/users/update-password",
                        json={"username": user, "password": new}, auth=(user, old), timeout=30)
sys.exit(0 if answer.ok else f"secrets: MLflow refused the new admin password: HTTP {answer.status_code} {answer.text[:200]}")'
      fi
      printf '%s' "$new" | in_volume set mlflow_auth_admin_password
      docker compose restart tracking-server
      ;;
    *)
      echo "secrets: cannot rotate '$name' (postgres_password, minio_root_password, mlflow_auth_admin_password, mlflow_flask_server_secret_key)" >&2
      exit 2
      ;;
  esac
  docker compose up -d --wait
  echo "secrets: rotated $name"
}

command=${1:-show}
case "$command" in
  show) shift || true; in_volume show "$@" ;;
  rotate) rotate "${2:-}" ;;
  reset-postgres-password) reset_postgres_password; docker compose up -d --wait ;;
  *) echo "usage: scripts/secrets.sh [show [NAME]] | rotate NAME | reset-postgres-password" >&2; exit 2 ;;
esac
