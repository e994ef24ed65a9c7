#!/usr/bin/env bash
# MLflow's own store tests, of the release the tracking server pins, against MLflow's SqlAlchemyStore and
# against our FastSqlAlchemyStore, each on a throwaway PostgreSQL (tests/fast_store/conftest.py's container).
#
#   scripts/upstream-store-tests.sh            # both stores
#   UPSTREAM_STORES=fast scripts/upstream-store-tests.sh -x
#
# The tests are downloaded (git sparse checkout of tests/ at the release tag) into a cache OUTSIDE this
# repository: their code is not ours to commit. Only the test names live here (tests/upstream/selected_tests.txt).
# Knobs:
#   UPSTREAM_TESTS_CACHE  where checkouts go (default ${XDG_CACHE_HOME:-~/.cache}/mlflow-stack)
#   UPSTREAM_TESTS_DIR    use this existing checkout of MLflow's repository (its tests/) instead of downloading
#   UPSTREAM_STORES       "mlflow fast" (default), or one of them
#   UPSTREAM_REPORT_DIR   where the JUnit reports go (default: the checkout's .upstream-reports)
# Exit status: 0 passed, 1 a test failed or setup broke, 3 github.com unreachable (one line on stderr says so).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
UNREACHABLE=3

# The release the tracking-server image runs; the host venv must have the same MLflow (trainer/requirements.txt).
VERSION=$(sed -n 's/^mlflow==\([0-9.]*\)$/\1/p' tracking-server/requirements.txt)
TAG="v$VERSION"
INSTALLED=$(python -c 'import mlflow; print(mlflow.__version__)')
if [ "$INSTALLED" != "$VERSION" ]; then
  echo "upstream-store-tests: the host venv has mlflow $INSTALLED, the tracking server pins $VERSION" >&2
  exit 1
fi

checkout="${UPSTREAM_TESTS_DIR:-}"
source_name="$checkout (UPSTREAM_TESTS_DIR)"
if [ -z "$checkout" ]; then
  source_name="MLflow $TAG"
  checkout="${UPSTREAM_TESTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlflow-stack}/mlflow-tests-$TAG"
  if [ ! -f "$checkout/.complete" ]; then
    url=https://github.com/mlflow/mlflow
    command -v git >/dev/null || { echo "upstream-store-tests: git is not installed (needed to download $TAG's tests)" >&2; exit 1; }
    # A blocked network can hang in DNS or TCP rather than fail: bound the probe.
    status=0
    GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote --exit-code --tags "$url" "refs/tags/$TAG" >/dev/null 2>&1 || status=$?
    if [ "$status" = 2 ]; then
      echo "upstream-store-tests: $url has no tag $TAG" >&2
      exit 1
    elif [ "$status" != 0 ]; then
      echo "upstream-store-tests: github.com unreachable; MLflow's $TAG store tests cannot be downloaded" >&2
      exit "$UNREACHABLE"
    fi
    rm -rf "$checkout" "$checkout.partial"
    mkdir -p "$(dirname "$checkout")"
    # Only tests/ (and the top-level files, pyproject.toml's pytest settings among them), at the tag.
    git clone --quiet --depth 1 --branch "$TAG" --filter=blob:none --sparse "$url" "$checkout.partial"
    git -C "$checkout.partial" sparse-checkout set tests
    touch "$checkout.partial/.complete"
    mv "$checkout.partial" "$checkout"
  fi
fi
test_file="$checkout/tests/store/tracking/sqlalchemy_store/test_sqlalchemy_store_runs.py"
if [ ! -f "$test_file" ]; then
  echo "upstream-store-tests: $test_file missing (MLflow moved its store tests?)" >&2
  exit 1
fi

reports="${UPSTREAM_REPORT_DIR:-$checkout/.upstream-reports}"
mkdir -p "$reports"
failed=0
for store in ${UPSTREAM_STORES:-mlflow fast}; do
  printf '\n== store tests of %s against the %s store\n' "$source_name" "$store"
  start=$(date +%s)
  # Its own tests/ package must be the one imported: run from the checkout, the plugin from our tests/upstream.
  (
    cd "$checkout"
    UPSTREAM_STORE="$store" UPSTREAM_SELECTED="$REPO/tests/upstream/selected_tests.txt" \
      PYTHONPATH="$REPO/tests/upstream" python -m pytest -p upstream_store_plugin -p no:cacheprovider \
      --junitxml="$reports/$store.xml" -o junit_family=xunit2 -q -rfEX -W ignore::DeprecationWarning \
      tests/store/tracking/sqlalchemy_store/test_sqlalchemy_store_runs.py "$@"
  ) || failed=1
  echo "$store store: $(( $(date +%s) - start )) s"
done
exit "$failed"
