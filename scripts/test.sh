#!/usr/bin/env bash
# The one test command, for people and CI alike:
#   lint and type checks -> build the images -> start the stack -> unit + stack tests -> stop the stack.
# Needs: Docker with Compose v2, a Python env with requirements-dev.txt and the trainer (make venv),
# a .env (scripts/init-env.sh), and MNIST_NPZ naming a Keras-format mnist.npz.
# KEEP_STACK=1 leaves the stack running afterwards (its volumes are always kept unless CLEAN_STACK=1).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
: "${MNIST_NPZ:?set MNIST_NPZ to a Keras-format mnist.npz (see README, Tests)}"
[ -f .env ] || scripts/init-env.sh

step() { printf '\n== %s\n' "$*"; }

step "lint and types"
ruff check .
ruff format --check .
mypy
hadolint trainer/Dockerfile tracking-server/Dockerfile
yamllint --strict docker-compose.yml docker-compose.override.yml docker-compose.gpu.yml .yamllint

step "build images"
start=$(date +%s)
docker compose --profile train build  # the trainer sits in a profile, so plain `build` skips it
echo "images built in $(( $(date +%s) - start )) s"

stop_stack() {
  if [ "${KEEP_STACK:-0}" = 1 ]; then return; fi
  if [ "${CLEAN_STACK:-0}" = 1 ]; then docker compose down -v --remove-orphans; else docker compose down --remove-orphans; fi
}
trap stop_stack EXIT

step "start the stack"
start=$(date +%s)
docker compose up -d --wait --wait-timeout 180
echo "stack healthy $(( $(date +%s) - start )) s after 'up'"

step "tests"
# tests/store starts a throwaway Postgres of its own (the stack image) on a random loopback port.
pytest tests/unit tests/store tests/stack "$@"
