#!/usr/bin/env bash
# Access tokens and grants of MLFLOW_AUTH=oidc, run inside the tracking server (its database, its settings):
#   scripts/token.sh create USER [--service-account] [--name NAME] [--expires-days N] [--output FILE]
#   scripts/token.sh list USER [--json]
#   scripts/token.sh revoke USER (--name NAME | --all)
#   scripts/token.sh grant (--user U | --group G) (--experiment ID | --model NAME) --permission READ|EDIT|MANAGE|NO_PERMISSIONS
#   scripts/token.sh revoke-grant (--user U | --group G) (--experiment ID | --model NAME)
# `create` prints only the token (stdout); --output writes it to a file inside the container, so redirect instead:
#   scripts/token.sh create trainer --service-account --name ci > trainer.token
# docs/team-mode.md, Single sign-on (OIDC).
set -euo pipefail
cd "$(dirname "$0")/.."
exec docker compose exec -T tracking-server mlflow-stack-token "$@"
