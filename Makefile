# Shortcuts; each target is one documented command.
PYTHON ?= python3
TF_CPU := tensorflow-cpu==2.21.0
# The commit the trainer image records (runs' git_sha tag); docker compose reads it for the build arg.
export GIT_SHA ?= $(shell scripts/git-sha.sh)

.PHONY: env up down train test test-unit lint venv logs clean backup restore migrate-objects bench secrets gc status verify docs

env:  ## optional: write your own .env (random secrets) instead of the generated ones
	scripts/init-env.sh

up:  ## start Postgres, the object store (MinIO or SeaweedFS) and the tracking server; wait until healthy (secrets generated at the first start)
	docker compose up -d --wait

secrets:  ## print the generated secrets (e.g. the MinIO console login); rotate: scripts/secrets.sh rotate NAME
	scripts/secrets.sh show

down:  ## stop the stack, keep the data
	docker compose down

train:  ## train 5 epochs and register a new version of `mnist`
	docker compose run --rm trainer --epochs 5

logs:
	docker compose logs -f tracking-server

venv:  ## host Python env for tests and for running the trainer outside Docker (CI's .ci/run uses it too)
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -r trainer/requirements.txt -c trainer/constraints-cuda.txt \
	  "$(TF_CPU)" -r requirements-dev.txt
	.venv/bin/pip install -q --disable-pip-version-check --no-deps -e ./trainer
	# The server package too, for its entry points: without them a server started from this venv (tests/fast_store,
	# bench/fast_path_auth.py) would run MLflow's plain store, not the fast store the image ships.
	.venv/bin/pip install -q --disable-pip-version-check --no-deps -e ./tracking-server

lint:  ## ruff, formatting, mypy, hadolint, bash -n, yamllint and the docs site; needs only the venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/hadolint trainer/Dockerfile tracking-server/Dockerfile tests/oidc_provider/Dockerfile
	for script in scripts/*.sh .ci/run; do bash -n "$$script" || exit 1; done
	.venv/bin/yamllint --strict docker-compose.yml docker-compose.override.yml docker-compose.gpu.yml \
	  docker-compose.trainer.yml docker-compose.seaweedfs.yml tests/stack/seaweedfs-standin.yml bench/no-healthcheck.yml .yamllint deploy/helm/mlflow-stack/Chart.yaml deploy/helm/mlflow-stack/values.yaml \
	  deploy/helm/mlflow-stack/ci tests/chart/umbrella
	# the docs site (docs/configuration.md's tables come from the code)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet

# Two workers, one per core: most of the time goes to trainer subprocesses importing TensorFlow, which a second
# core halves. A file stays on one worker (loadfile), so a module's fixtures are built once.
test-unit:  ## unit tests of the trainer and the server: no Docker, no services, about 2 minutes on 2 cores
	.venv/bin/pytest tests/unit -n 2 --dist loadfile

test:  ## the test command CI runs (lint, unit, chart, stack); builds .venv if missing, fetches MNIST if MNIST_NPZ is unset
	scripts/test.sh

docs:  ## the documentation site, into site/ (strict: a broken link or an ungeneratable table fails)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

bench:  ## benchmarks against the running stack -> docs/performance.md
	scripts/bench.sh

backup:  ## Postgres dump + artifact bucket to backups/<timestamp>/
	scripts/backup.sh

restore:  ## make restore BACKUP=backups/<timestamp>: replace the stack's data with a backup
	scripts/restore.sh "$(BACKUP)"

migrate-objects:  ## make migrate-objects TARGET=seaweedfs: copy the bucket from MinIO (SHA-256 checked), switch over
	scripts/migrate-objects.sh "$(TARGET)"

clean:  ## stop the stack and DELETE its volumes (runs, models, artifacts)
	docker compose down -v --remove-orphans

gc:  ## permanently remove deleted runs, experiments, logged models and their files; OLDER_THAN=30d keeps recent deletions
	docker compose exec -T tracking-server stack-gc $(if $(OLDER_THAN),--older-than "$(OLDER_THAN)")

verify:  ## check every artifact against the SHA-256 recorded when it was stored; names any whose bytes changed
	docker compose exec -T tracking-server stack-verify

status:  ## services' health and versions, volumes' disk use, what the server holds, the champion, newest backup
	$(PYTHON) scripts/status.py
