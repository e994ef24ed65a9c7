"""`mlflow-stack-token`: access tokens and grants of the OIDC mode (MLFLOW_AUTH=oidc), for an admin at the server.

    mlflow-stack-token create USER [--service-account] [--name NAME] [--expires-days N] [--output FILE]
    mlflow-stack-token list USER [--json]
    mlflow-stack-token revoke USER (--name NAME | --all)
    mlflow-stack-token grant (--user U | --group G) (--experiment ID | --model NAME) --permission P
    mlflow-stack-token revoke-grant (--user U | --group G) (--experiment ID | --model NAME)

Machines (trainers, CI, the model server) sign in with a token as the password of HTTP basic auth
(MLFLOW_TRACKING_USERNAME=<user>, MLFLOW_TRACKING_PASSWORD=<token>). mlflow-oidc-auth issues tokens over REST only
to a person signed in through the provider (a token cannot mint tokens), so this command works on the plugin's
store directly, where the admin already holds the power: `docker compose exec tracking-server mlflow-stack-token`
(scripts/token.sh), `kubectl exec` on Kubernetes. Tokens are stored hashed; the plaintext is printed once.

It reads the database as the server does (Settings: POSTGRES_* or MLFLOW_BACKEND_STORE_URI, MLFLOW_OIDC_DB).
Errors: one line on stderr; exit 2 for usage, 1 for a failure (unknown user, token or grant).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from mlflow_stack_server.console import USAGE_ERROR, Console
from mlflow_stack_server.settings import Settings

console = Console("mlflow-stack-token:")
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
DEFAULT_EXPIRES_DAYS = 365  # the plugin's longest lifetime is 366 days
WRITTEN_BY = "manual"  # the plugin's owner tag for rows an admin made by hand


class CommandError(Exception):
    """A failure to report in one line (exit 1)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        console.fail(message, code=USAGE_ERROR)


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="mlflow-stack-token", description="Access tokens and grants of MLFLOW_AUTH=oidc.")
    commands = top.add_subparsers(dest="command", required=True, parser_class=Parser)

    create = commands.add_parser("create", help="issue a token (creates USER if missing)")
    create.add_argument("user")
    create.add_argument("--service-account", action="store_true", help="create USER as a service account")
    create.add_argument("--name", default="", help="the token's name (default: cli-<UTC time>)")
    create.add_argument("--expires-days", type=int, default=DEFAULT_EXPIRES_DAYS, help="lifetime, 1-366 days")
    create.add_argument("--output", type=Path, help="write the token to this file (mode 0600) instead of stdout")

    listing = commands.add_parser("list", help="a user's tokens (never their secrets)")
    listing.add_argument("user")
    listing.add_argument("--json", action="store_true")

    revoke = commands.add_parser("revoke", help="delete a user's token(s)")
    revoke.add_argument("user")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--name")
    which.add_argument("--all", action="store_true")

    for name, text in (("grant", "grant a permission"), ("revoke-grant", "remove a grant")):
        command = commands.add_parser(name, help=text)
        who = command.add_mutually_exclusive_group(required=True)
        who.add_argument("--user")
        who.add_argument("--group")
        what = command.add_mutually_exclusive_group(required=True)
        what.add_argument("--experiment", help="experiment id")
        what.add_argument("--model", help="registered model name")
        if name == "grant":
            command.add_argument("--permission", required=True, type=str.upper, choices=PERMISSIONS)
    return top


def open_store(settings: Settings) -> Any:
    """The plugin's store on MLFLOW_OIDC_DB (its settings are read from the environment at import)."""
    from mlflow_stack_server.oidc_auth import users_database

    os.environ["OIDC_USERS_DB_URI"] = users_database(settings).uri
    os.environ.setdefault("CONFIG_PROVIDERS", "env")
    # Quiet: the plugin logs its start-up at INFO, and warns about a session key this command never uses.
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("SECRET_KEY", settings.flask_secret_key or "unused-by-the-token-cli")
    # A CLI process: one connection is plenty (the server's pool sizes are for its request threads).
    os.environ["OIDC_DB_POOL_SIZE"] = "1"
    from mlflow_oidc_auth.store import store

    return store


def create(store: Any, args: argparse.Namespace) -> None:
    if not 1 <= args.expires_days <= 366:
        raise CommandError(f"--expires-days {args.expires_days}: expected 1 to 366")
    if not store.has_user(args.user):
        store.create_user(args.user, args.user, is_admin=False, is_service_account=args.service_account)
        # On stderr: stdout carries the token alone, for `TOKEN=$(mlflow-stack-token create ...)`.
        kind = "service account" if args.service_account else "user"
        print(f"{console.prefix} created {kind} {args.user}", file=sys.stderr)
    name = args.name or f"cli-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=args.expires_days)
    _record, token = store.create_user_token(args.user, name, expires, WRITTEN_BY)
    if args.output:
        descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(token + "\n")
        os.chmod(args.output, 0o600)  # an existing file keeps its mode through O_CREAT
        print(f"token {name!r} for {args.user} written to {args.output}, expires {expires:%Y-%m-%d}", file=sys.stderr)
    else:
        print(token)


def _require_user(store: Any, user: str) -> None:
    if not store.has_user(user):
        raise CommandError(f"no user {user!r}")


def list_tokens(store: Any, args: argparse.Namespace) -> None:
    _require_user(store, args.user)
    tokens = [record.to_json() for record in store.list_user_tokens(args.user)]
    if args.json:
        print(json.dumps(tokens, indent=2))
        return
    for token in tokens:
        state = "active" if token["active"] else "expired"
        print(f"{token['id']}\t{token['name']}\tcreated {token['created_at']}\texpires {token['expires_at']}\t{state}")


def revoke(store: Any, args: argparse.Namespace) -> None:
    _require_user(store, args.user)
    if args.all:
        console.log(f"revoked {store.delete_user_tokens(args.user)} token(s) of {args.user}")
        return
    matching = [record for record in store.list_user_tokens(args.user) if record.name == args.name]
    if not matching:
        raise CommandError(f"{args.user} has no token named {args.name!r}")
    for record in matching:
        store.delete_user_token(args.user, record.id)
    console.log(f"revoked token {args.name!r} of {args.user}")


def _target(args: argparse.Namespace) -> str:
    who = f"user {args.user}" if args.user else f"group {args.group}"
    what = f"experiment {args.experiment}" if args.experiment else f"model {args.model}"
    return f"{who} on {what}"


def grant(store: Any, args: argparse.Namespace) -> None:
    from mlflow.exceptions import MlflowException

    if args.user:
        _require_user(store, args.user)
    else:
        store.populate_groups([args.group])  # a group may be granted before any member signed in
    calls = {
        (True, True): (store.update_experiment_permission, store.create_experiment_permission),
        (True, False): (store.update_registered_model_permission, store.create_registered_model_permission),
        (False, True): (store.update_group_experiment_permission, store.create_group_experiment_permission),
        (False, False): (store.update_group_model_permission, store.create_group_model_permission),
    }
    update, create_grant = calls[(bool(args.user), bool(args.experiment))]
    # The plugin's argument orders differ: (experiment_id, username), (name, username), (group, id), (group, name).
    if args.user:
        arguments = (args.experiment or args.model, args.user, args.permission)
    else:
        arguments = (args.group, args.experiment or args.model, args.permission)
    try:
        update(*arguments)
    except MlflowException:
        create_grant(*arguments)
    console.log(f"granted {args.permission} to {_target(args)}")


def revoke_grant(store: Any, args: argparse.Namespace) -> None:
    from mlflow.exceptions import MlflowException

    if args.user:
        _require_user(store, args.user)
        if args.experiment:
            delete, arguments = store.delete_experiment_permission, (args.experiment, args.user)
        else:
            delete, arguments = store.delete_registered_model_permission, (args.model, args.user)
    elif args.experiment:
        delete, arguments = store.delete_group_experiment_permission, (args.group, args.experiment)
    else:
        delete, arguments = store.delete_group_model_permission, (args.group, args.model)
    try:
        delete(*arguments)
    except MlflowException as error:
        raise CommandError(f"no grant for {_target(args)} ({error.message})") from error
    console.log(f"removed the grant of {_target(args)}")


# The service account stack-gc deletes artifacts as (through the server's proxy, which needs an admin).
GC_ACCOUNT = "stack-gc"


@contextmanager
def admin_token(settings: Settings, account: str = GC_ACCOUNT) -> Iterator[tuple[str, str]]:
    """(account, token) of an admin service account for one job in this container (stack-gc); the token lives
    for a day at most and is deleted when the block ends."""
    store = open_store(settings)
    if not store.has_user(account):
        store.create_user(account, account, is_admin=True, is_service_account=True)
    name = f"{account}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
    record, token = store.create_user_token(account, name, expires, WRITTEN_BY)
    try:
        yield account, token
    finally:
        store.delete_user_token(account, record.id)


COMMANDS = {"create": create, "list": list_tokens, "revoke": revoke, "grant": grant, "revoke-grant": revoke_grant}


def main(argv: list[str] | None = None) -> None:
    """Console script `mlflow-stack-token COMMAND ...` (module docstring)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    settings = console.configured(lambda: Settings.from_environment(server=False))
    if settings.auth != "oidc":
        console.fail(f"MLFLOW_AUTH is {settings.auth!r}: tokens and grants exist only with MLFLOW_AUTH=oidc")
    settings.export_secrets()
    store = open_store(settings)
    try:
        COMMANDS[args.command](store, args)
    except CommandError as error:
        console.fail(str(error))
