#!/usr/bin/env bash
# The one test command, for people and CI alike (`make test`). Fastest feedback first:
#   host venv (if missing) -> lint and types -> unit tests (`make test-unit`, no Docker) -> chart (offline)
#   -> MLflow's own store tests (skip offline) -> MNIST (if MNIST_NPZ is unset) -> build the images
#   -> the chart's pods, live on Docker -> start the stack -> fast-store and stack tests -> stop the stack.
# Needs only Docker with Compose v2 and Python 3.11. No .env: the stack generates its secrets.
# MNIST_NPZ names a Keras-format mnist.npz; unset, Keras' own file is downloaded once (needs internet) into
# ${XDG_CACHE_HOME:-~/.cache}/mlflow-stack/datasets/mnist.npz and used from there.
# KEEP_STACK=1 leaves the stack running afterwards (its volumes are always kept unless CLEAN_STACK=1).
# LINT_AND_UNIT_DONE=1 skips lint and unit tests (CI runs `make lint test-unit` before it prepares Docker).
# Arguments go to the last pytest (fast-store and stack tests), e.g. scripts/test.sh -k metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

# The trainer image records the commit it was built from (runs' git_sha tag).
GIT_SHA="${GIT_SHA:-$(scripts/git-sha.sh)}"
export GIT_SHA

step() { printf '\n== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "host venv (.venv, once)"
  make venv PYTHON="${PYTHON:-python3}"
fi
export PATH="$PWD/.venv/bin:$PATH"

if [ "${LINT_AND_UNIT_DONE:-0}" != 1 ]; then
  step "lint and types"
  make lint

  # No Docker, no services: the trainer's and the server's unit tests, on two workers.
  step "unit tests"
  start=$(date +%s)
  make test-unit
  echo "unit tests took $(( $(date +%s) - start )) s"
fi

# Offline, before anything starts: helm lint --strict, every ci/*.yaml and an umbrella chart rendered and
# validated against Kubernetes 1.30 and 1.35, the install order of Helm, Flux and Argo CD, and the chart's
# promises read from the rendered objects (needs helm and kubernetes-validate: ../shared/ci/k8s-tools.sh).
step "helm chart (offline)"
start=$(date +%s)
pytest tests/chart -q
echo "chart checks took $(( $(date +%s) - start )) s"

# MLflow's own store tests of the pinned release, downloaded from GitHub into a cache outside the repository,
# against MLflow's store and ours, each on a throwaway Postgres (scripts/upstream-store-tests.sh). Without
# GitHub (this project's CI reaches only package mirrors) it SKIPS and prints the reason: nothing proven then.
step "MLflow's own store tests (upstream, needs github.com)"
start=$(date +%s)
pytest tests/upstream -q
echo "upstream store tests took $(( $(date +%s) - start )) s"

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

step "build images"
start=$(date +%s)
docker compose --profile train build  # the trainer sits in a profile, so plain `build` skips it
echo "images built in $(( $(date +%s) - start )) s"

# The chart's pods as rendered, run with Docker in Helm's order: prepare init containers, 3 replicas, a trainer
# Job while a replica is killed, the model server; auth with the Service on port 80; a TLS Postgres
# (tests/chart_live; its own containers, network and volumes, named chart-pods-*).
step "helm chart pods, live on Docker"
start=$(date +%s)
pytest tests/chart_live -q
echo "chart pods checked in $(( $(date +%s) - start )) s"

stop_stack() {
  if [ "${KEEP_STACK:-0}" = 1 ]; then return; fi
  if [ "${CLEAN_STACK:-0}" = 1 ]; then docker compose down -v --remove-orphans; else docker compose down --remove-orphans; fi
}
# The second stack (SeaweedFS, below) is always removed with its volumes: it holds only test data.
seaweedfs_project="${COMPOSE_PROJECT_NAME:-mlflow-stack}-seaweedfs"
stop_stacks() {
  if [ -n "${beside_pid:-}" ]; then  # interrupted: the tests beside the main pytest, and what they run
    pkill -TERM -P "$beside_pid" 2>/dev/null || true
    kill "$beside_pid" 2>/dev/null || true
  fi
  stop_stack
  COMPOSE_PROJECT_NAME=$seaweedfs_project COMPOSE_FILE=docker-compose.yml:docker-compose.seaweedfs.yml \
    docker compose --profile minio --profile train down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
}
trap stop_stacks EXIT

step "start the stack"
start=$(date +%s)
docker compose up -d --wait --wait-timeout 180
echo "stack healthy $(( $(date +%s) - start )) s after 'up'"

# The tests that touch artifacts once more on SeaweedFS (docker-compose.seaweedfs.yml; docs/object-stores.md), on a
# second stack of its own project and ports (MLFLOW_PORT + 20): a 1 GiB artifact up and down, a down/up (registry
# and artifacts kept), `make status`, and train/backup/wipe/restore/predict. Left out: test_end_to_end.py's
# training (the backup test trains, registers and reloads a model on SeaweedFS already); the object-store outage
# tests (CI's MinIO stand-in is the same SeaweedFS server, so they prove nothing new here); the move from MinIO
# (test_migrate_objects.py starts MinIO and SeaweedFS stacks of its own on MLFLOW_PORT + 30).
seaweedfs_stage() {
  step "artifact tests on SeaweedFS (a second stack)"
  local start
  start=$(date +%s)
  local seaweedfs_files=docker-compose.yml:docker-compose.override.yml:docker-compose.seaweedfs.yml
  # The CI's stand-in image (../shared/ci/offline-docker.sh) has no curl: tests/stack/seaweedfs-standin.yml asks
  # the same /healthz with bash. The real image runs the compose file's own check.
  local extra=""
  if ! docker run --rm --entrypoint sh "${SEAWEEDFS_IMAGE:-chrislusf/seaweedfs:4.48}" -c 'command -v curl' >/dev/null 2>&1; then
    extra=tests/stack/seaweedfs-standin.yml
  fi
  # In a subshell of its own (its exports stay there); `&&`, not set -e, which a caller's `||` switches off.
  local status=0
  (
    export COMPOSE_PROJECT_NAME=$seaweedfs_project COMPOSE_FILE=$seaweedfs_files${extra:+:$extra}
    export MIGRATE_EXTRA_COMPOSE_FILES=$extra MLFLOW_PORT=$(( ${MLFLOW_PORT:-5000} + 20 ))
    export SERVING_PORT=$(( ${SERVING_PORT:-5001} + 20 )) MINIO_CONSOLE_PORT=$(( ${MINIO_CONSOLE_PORT:-9001} + 20 ))
    export STACK_URL=http://localhost:$MLFLOW_PORT  # bench/ (the large-artifact helpers) reads only this
    docker compose up -d --wait --wait-timeout 180 &&
      pytest tests/stack/test_large_artifacts.py tests/stack/test_restarts.py tests/stack/test_status.py \
        tests/stack/test_backup_restore.py \
        -k "not test_restarts or down_and_up" --durations=15
  ) || status=$?
  echo "SeaweedFS stage took $(( $(date +%s) - start )) s"
  return "$status"
}

step "fast-store and stack tests"
# tests/fast_store starts a throwaway Postgres of its own (the stack image) on a random loopback port.
# tests/stack/test_sso.py builds the test OpenID provider's image (tests/oidc_provider, ~50 s cold) and starts one
# OIDC team-mode stack of its own (2 replicas) for all its tests; their measured numbers (revocation latencies)
# are printed in pytest's "measurements" section.
# --durations: the slowest tests' times, so CI's time budget can be watched from its log.
# Beside the session stack's tests, as a second chain sharing nothing with that stack (own Postgres, projects and
# ports): the fast-store tests and the tests that start stacks of their own (a fresh clone, three replicas, the
# upgrade, team mode, the move from MinIO to SeaweedFS; docs/testing.md) in one pytest, then the SeaweedFS stage
# (SEAWEEDFS_TESTS=0 skips it). The chain's output follows the main pytest's; any failing fails the script.
# Arguments (which select among all of these tests, and skip the SeaweedFS stage) or OWN_STACK_TESTS_BESIDE=0
# run them in one pytest, then the SeaweedFS stage on the cores and memory the session's stack gave up.
own_stack_tests=(tests/stack/test_first_start.py tests/stack/test_replicas.py tests/stack/test_upgrade.py
  tests/stack/test_team_mode.py tests/stack/test_migrate_objects.py)
if [ "${OWN_STACK_TESTS_BESIDE:-1}" = 1 ] && [ $# -eq 0 ]; then
  beside_log=$(mktemp)
  (
    status=0
    pytest tests/fast_store "${own_stack_tests[@]}" --durations=20 || status=$?
    if [ "${SEAWEEDFS_TESTS:-1}" = 1 ]; then seaweedfs_stage || status=$?; fi
    exit "$status"
  ) >"$beside_log" 2>&1 &
  beside_pid=$!
  main_status=0
  pytest tests/stack --durations=30 "${own_stack_tests[@]/#/--ignore=}" || main_status=$?
  beside_status=0
  wait "$beside_pid" || beside_status=$?
  unset beside_pid  # finished: nothing for stop_stacks to stop
  step "fast-store tests and tests that start stacks of their own, then SeaweedFS (ran beside the above)"
  cat "$beside_log"
  rm -f "$beside_log"
  if [ "$main_status" != 0 ] || [ "$beside_status" != 0 ]; then
    echo "test: stack tests exited $main_status, the tests beside them $beside_status" >&2
    exit 1
  fi
else
  pytest tests/fast_store tests/stack --durations=30 "$@"
  if [ "${SEAWEEDFS_TESTS:-1}" = 1 ] && [ $# -eq 0 ]; then
    stop_stack  # its cores and memory go to the second stack (KEEP_STACK=1 leaves it running)
    seaweedfs_stage
  fi
fi
