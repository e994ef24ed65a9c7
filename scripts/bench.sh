#!/usr/bin/env bash
# Every benchmark, against the running stack; prints numbers and writes docs/bench-results/*.json and
# docs/performance.md. Needs the test environment (make venv) and MNIST_NPZ. About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
: "${MNIST_NPZ:?set MNIST_NPZ to a Keras-format mnist.npz}"

docker compose up -d --wait
python -m bench.stack_start
python -m bench.tracking_overhead
python -m bench.input_pipeline
# The shipped configuration, then MLflow's own default of 4 workers, on the same database.
python -m bench.server_load shipped-"${MLFLOW_WORKERS:-2}"-workers 1 8 32 64
MLFLOW_WORKERS=4 docker compose up -d --wait tracking-server
python -m bench.server_load mlflow-default-4-workers 1 8 32 64
docker compose up -d --wait tracking-server
python -m bench.report
