#!/usr/bin/env bash
# Every benchmark, against the running stack; prints numbers and writes docs/bench-results/*.json and
# docs/performance.md. Needs the test environment (make venv), FastTrackML's binary
# (.venv/bin/pip install --no-deps -r bench/requirements.txt) and MNIST_NPZ. About 20 minutes on 2 cores.
# It leaves experiments named bench-* in the stack (bench-search-10k holds 10k synthetic runs, reused).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
: "${MNIST_NPZ:?set MNIST_NPZ to a Keras-format mnist.npz}"
trap 'python -m bench.server_variants stop' EXIT

docker compose up -d --wait
python -m bench.stack_start
python -m bench.tracking_overhead
python -m bench.input_pipeline
python -m bench.determinism
python -m bench.search_runs
# The shipped configuration, then `mlflow server` with MLflow's defaults on the same database, then
# each tuned knob on its own at K = 64.
python -m bench.server_load shipped 1 8 32 64
# 64 trainers at a realistic pace: one epoch per second each (a fast GPU epoch of MNIST).
python -m bench.server_load shipped-paced 64 --epoch-seconds 1
python -m bench.server_variants baseline
python -m bench.server_variants tuning
# Fast store on / off, MLflow defaults, team mode (TLS through the gateway's configuration, with basic-auth logins
# and with an OIDC service-account token; the test OpenID provider's image is built from tests/oidc_provider if
# missing) and FastTrackML side by side at K = 8 and 64 (BENCH_REPEATS, default 2), and where one log_batch
# request's CPU goes with each store.
python -m bench.server_variants side-by-side
# Server CPU per call, by call (create-run, log-batch, set-tag, update), one at a time, for the same servers.
python -m bench.per_call
python -m bench.profile_log_batch
# Postgres round trips per hot write of the fast store (a statement-logging throwaway Postgres).
python -m bench.round_trips
# 1 GiB up and down through the gateway (LARGE_ARTIFACT_MIB to change), with the server's peak memory.
python -m bench.large_artifact --size-mib "${LARGE_ARTIFACT_MIB:-1024}"
# The running server end to end (uvicorn to the driver), sampled by py-spy: needs root or CAP_SYS_PTRACE.
if command -v py-spy >/dev/null && [ "$(id -u)" = 0 ]; then python -m bench.profile_server stack 8 25; fi
BENCH_SECONDS=$SECONDS python -m bench.report
