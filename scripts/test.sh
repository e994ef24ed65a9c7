#!/usr/bin/env bash
# The one test command, for people and CI alike (`make test`):
#   host venv (if missing) -> MNIST (if MNIST_NPZ is unset) -> lint and type checks -> build the images ->
#   start the stack -> unit + stack tests -> stop the stack.
# Needs only Docker with Compose v2 and Python 3.11. No .env: the stack generates its secrets.
# MNIST_NPZ names a Keras-format mnist.npz; unset, Keras' own file is downloaded once (needs internet) into
# ${XDG_CACHE_HOME:-~/.cache}/mlflow-stack/datasets/mnist.npz and used from there.
# KEEP_STACK=1 leaves the stack running afterwards (its volumes are always kept unless CLEAN_STACK=1).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "host venv (.venv, once)"
  make venv PYTHON="${PYTHON:-python3}"
fi
export PATH="$PWD/.venv/bin:$PATH"

if [ -z "${MNIST_NPZ:-}" ]; then
  step "MNIST (MNIST_NPZ unset)"
  # The URL and SHA-256 keras.datasets.mnist.load_data() uses (keras/src/datasets/mnist.py); Keras checks
  # the hash and downloads only when the cached file is missing or wrong.
  MNIST_NPZ=$(python -c '
import contextlib, os, sys, keras
try:
    with contextlib.redirect_stdout(sys.stderr):  # its progress bar; only the path goes to stdout
        path = keras.utils.get_file(
            fname="mnist.npz",
            origin="https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
            file_hash="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            cache_dir=os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlflow-stack"),
        )
except Exception as error:
    sys.exit(f"test: {str(error).splitlines()[0]}")
print(path)') || { echo "test: could not download MNIST; set MNIST_NPZ to a Keras-format mnist.npz (README, Tests)" >&2; exit 2; }
  export MNIST_NPZ
  echo "MNIST_NPZ=$MNIST_NPZ"
fi


step "lint and types"
ruff check .
ruff format --check .
mypy
hadolint trainer/Dockerfile tracking-server/Dockerfile
for script in scripts/*.sh .ci/run; do bash -n "$script"; done
yamllint --strict docker-compose.yml docker-compose.override.yml docker-compose.gpu.yml docker-compose.trainer.yml .yamllint

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
pytest tests/unit tests/stack "$@"
