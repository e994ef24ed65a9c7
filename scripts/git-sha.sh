#!/usr/bin/env bash
# Prints the commit the trainer image is built from, for its GIT_SHA build arg (the runs' git_sha tag):
# `git rev-parse HEAD`, plus "-dirty" when the trainer has uncommitted changes. Prints nothing outside git.
set -uo pipefail
cd "$(dirname "$0")/.."
sha=$(git rev-parse HEAD 2>/dev/null) || exit 0
git diff --quiet HEAD -- trainer 2>/dev/null || sha="$sha-dirty"
echo "$sha"
