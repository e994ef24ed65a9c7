"""MkDocs hook: the configuration page's tables, generated from the code and the compose files.

One source per knob:
- the tracking server's settings: `mlflow_stack_server.settings.reference()` (tracking-server/);
- the trainer's options and environment: `mnist_trainer.config.reference()` (trainer/src/);
- the compose-level knobs (ports, bind addresses, images, build arguments, ...): the comment above each
  variable in `.env.example`; their defaults come from the `${NAME:-default}` in the docker-compose files.

`docs/configuration.md` holds three markers that this hook replaces with tables: `<!-- compose-knobs -->`,
`<!-- server-settings -->`, `<!-- trainer-settings -->`. The build fails, naming the fix, when a function is
missing or breaks its contract, when a marker is missing, when a variable the compose files read is described
nowhere, or when one is described both in `.env.example` and by the code.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
PAGE = "configuration.md"
# The stack's own file first: the others are read as additions to it.
COMPOSE_FILES = sorted(
    ROOT.glob("docker-compose*.yml"), key=lambda path: (path.name != "docker-compose.yml", path.name)
)
ENV_EXAMPLE = ROOT / ".env.example"

# (module, function's contract keys, compose services whose environment the code reads)
SERVER = ("mlflow_stack_server.settings", ("env", "default", "description", "section"))
TRAINER = ("mnist_trainer.config", ("name", "env", "default", "description", "section"))
# `secrets` is left out on purpose: a secret set in .env replaces the generated one, a compose-level role
# that .env.example describes, next to what the server does with it.
SERVER_SERVICES = ("tls", "tracking-server-prepare", "tracking-server")
TRAINER_SERVICES = ("trainer",)

REFERENCE = re.compile(r"\$\{(?P<var>[A-Z][A-Z0-9_]*)(?:(?P<op>:?[-?])(?P<default>(?:[^{}]|\{[^{}]*\})*))?\}")
ASSIGNMENT = re.compile(r"^#?\s?(?P<var>[A-Z][A-Z0-9_]*)=")


def reference(module_name: str, keys: tuple[str, ...]) -> list[dict[str, str]]:
    """The module's reference(), checked against the contract this page is rendered from."""
    for folder in ("tracking-server", "trainer/src"):  # this checkout's code, not an installed copy
        if str(ROOT / folder) not in sys.path:
            sys.path.insert(0, str(ROOT / folder))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PluginError(f"configuration page: cannot import {module_name} ({error})") from error
    function: Callable[[], Any] | None = getattr(module, "reference", None)
    if not callable(function):
        raise PluginError(
            f"configuration page: {module_name}.reference() is missing; the page is generated from it "
            f"(contract: reference() -> list[dict[str, str]] with the keys {', '.join(keys)})"
        )
    entries = function()
    if not isinstance(entries, list) or not entries:
        raise PluginError(f"configuration page: {module_name}.reference() returned no list of settings")
    for entry in entries:
        if not isinstance(entry, dict) or set(keys) - set(entry):
            raise PluginError(
                f"configuration page: {module_name}.reference() returned {entry!r}; each entry needs the keys "
                f"{', '.join(keys)}"
            )
    return [{key: str(entry[key]) for key in keys} for entry in entries]


@dataclass(frozen=True)
class Use:
    """One `${VAR...}` in a compose file: passed to a service as its environment variable `target` (when the
    whole value is that reference), or used by compose itself (image, port, command, build argument, ...)."""

    var: str
    default: str | None
    file: str
    service: str | None = None
    target: str | None = None
    required: bool = False


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: its merge tags `!reset` and `!override` (docker-compose.seaweedfs.yml) load
    as the value they carry."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_mapping(node, deep=True)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_sequence(node, deep=True)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_scalar(node)
        ),
    )


def load_compose(path: Path) -> dict[str, Any]:
    # A SafeLoader subclass: no arbitrary objects.
    return yaml.load(path.read_text(), Loader=ComposeLoader) or {}


def compose_uses() -> list[Use]:
    uses: list[Use] = []
    for path in COMPOSE_FILES:
        document = load_compose(path)
        for service, spec in (document.get("services") or {}).items():
            environment = spec.get("environment") or {}
            if isinstance(environment, list):
                environment = dict(item.split("=", 1) for item in environment)
            passed = set()
            for target, value in environment.items():
                match = REFERENCE.fullmatch(str(value))
                if match:
                    uses.append(Use(match["var"], _default(match), path.name, service, target, match["op"] == ":?"))
                    uses += [Use(m["var"], _default(m), path.name) for m in REFERENCE.finditer(match["default"] or "")]
                    passed.add(target)
            rest = {key: value for key, value in spec.items() if key != "environment"}
            rest["environment"] = {k: v for k, v in environment.items() if k not in passed}
            uses += [Use(m["var"], _default(m), path.name) for text in _strings(rest) for m in REFERENCE.finditer(text)]
    return uses


def _default(match: re.Match[str]) -> str | None:
    return match["default"] if match["op"] in (":-", "-") else None


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def env_example() -> dict[str, str]:
    """Each variable of .env.example with the comment lines right above it (a comment block above several
    variables describes the first; section rulers, `# --- ... ---`, are not descriptions)."""
    described: dict[str, str] = {}
    comment: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        assignment = ASSIGNMENT.match(line)
        if assignment:
            if not comment:
                raise PluginError(f"configuration page: {assignment['var']} in .env.example has no comment above it")
            described.setdefault(assignment["var"], " ".join(comment))
            comment = []
        elif line.startswith("#") and not line.startswith("# ---"):
            comment.append(line.lstrip("#").strip())
        else:
            comment = []
    return described


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def code(text: str) -> str:
    return f"`{text}`" if text else "empty"


Row = tuple[str, ...]


def table(header: Row, rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def by_section(entries: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    sections: dict[str, list[dict[str, str]]] = {}
    for entry in entries:
        sections.setdefault(entry["section"] or "Other", []).append(entry)
    return sections


def in_compose(env: str, services: tuple[str, ...], uses: list[Use]) -> str:
    """How the compose files set a service's environment variable: from which .env variable (and its default
    there), as a fixed value, from a generated secret file, or not at all. One part per compose file that
    sets it, the stack's own first."""
    hows: dict[str, str] = {}
    for path in COMPOSE_FILES:
        how = _how(path, env, services, uses)
        if how and how not in hows:
            hows[how] = how if path.name == "docker-compose.yml" else f"{path.name}: {how}"
    return "; ".join(hows.values()) or "not set by compose"


def _how(path: Path, env: str, services: tuple[str, ...], uses: list[Use]) -> str:
    for name in re.findall(r"[A-Z][A-Z0-9_]+", env):
        for use in uses:
            if use.file == path.name and use.service in services and use.target == name:
                if use.required:
                    return f"`.env`: `{use.var}` (required)"
                default = "" if use.default is None else f" (default {code(use.default)})"
                return f"`.env`: `{use.var}`{default}"
        environment = _literal_environment(path, services)
        if f"{name}_FILE" in environment:
            return "generated secret file (`secrets` volume)"
        if name in environment:
            return f"fixed: {code(environment[name])}"
    return ""


def _literal_environment(path: Path, services: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    document = load_compose(path)
    for service, spec in (document.get("services") or {}).items():
        environment = spec.get("environment") or {}
        if service in services and isinstance(environment, dict):
            for key, value in environment.items():
                if not REFERENCE.search(str(value)):
                    found.setdefault(key, str(value))
    return found


def drop_empty_columns(header: Row, rows: Sequence[Row]) -> tuple[Row, list[Row]]:
    keep = [i for i in range(len(header)) if any(row[i] for row in rows)]
    return tuple(header[i] for i in keep), [tuple(row[i] for i in keep) for row in rows]


def render() -> dict[str, str]:
    server = reference(*SERVER)
    trainer = reference(*TRAINER)
    uses = compose_uses()
    described = env_example()
    # Every variable name in an entry's `env` ("POSTGRES_PASSWORD" or "POSTGRES_PASSWORD, POSTGRES_PASSWORD_FILE").
    code_envs = {
        name: module
        for module, entries in ((SERVER[0], server), (TRAINER[0], trainer))
        for entry in entries
        for name in re.findall(r"[A-Z][A-Z0-9_]+", entry["env"])
    }
    by_code_services = SERVER_SERVICES + TRAINER_SERVICES

    problems = []
    for var in sorted({use.var for use in uses}):
        var_uses = [use for use in uses if use.var == var]
        # Described by the code when compose hands it, under the same name, to a service whose code documents it.
        passed_to_code = [use.service in by_code_services and use.target in code_envs for use in var_uses]
        if var in described and all(passed_to_code):
            documented_by = code_envs[str(var_uses[0].target)]
            problems.append(
                f"{var} is described twice: delete its comment in .env.example ({documented_by}.reference() "
                "documents it, and compose only hands it to that code)"
            )
        elif var not in described and not any(passed_to_code):
            problems.append(
                f"the compose files read {var}, which nothing describes: add a comment above it "
                "in .env.example, or document it in the code's reference()"
            )
    if problems:
        raise PluginError("configuration page:\n  " + "\n  ".join(problems))

    defaults: dict[str, str] = {}
    for use in uses:
        if use.default is not None:
            defaults.setdefault(use.var, use.default)
    compose_rows: list[Row] = [
        (f"`{var}`", code(defaults[var]) if var in defaults else "unset", description)
        for var, description in described.items()
    ]

    server_parts = []
    for section, entries in by_section(server).items():
        rows: list[Row] = [
            (f"`{e['env']}`", code(e["default"]), in_compose(e["env"], SERVER_SERVICES, uses), e["description"])
            for e in entries
        ]
        server_parts.append(f"### {section}\n\n" + table(("variable", "default", "in compose", "meaning"), rows))

    trainer_parts = []
    for section, entries in by_section(trainer).items():
        trainer_rows: list[Row] = [
            (
                f"`{e['name']}`" if e["name"] else "",
                f"`{e['env']}`" if e["env"] else "",
                code(e["default"]),
                in_compose(e["env"], TRAINER_SERVICES, uses) if e["env"] else "",
                e["description"],
            )
            for e in entries
        ]
        header, shown = drop_empty_columns(("option", "variable", "default", "in compose", "meaning"), trainer_rows)
        trainer_parts.append(f"### {section}\n\n" + table(header, shown))

    return {
        "<!-- compose-knobs -->": table(("variable", "default", "meaning"), compose_rows),
        "<!-- server-settings -->": "\n\n".join(server_parts),
        "<!-- trainer-settings -->": "\n\n".join(trainer_parts),
    }


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    for marker, generated in render().items():
        if marker not in markdown:
            raise PluginError(f"configuration page: docs/{PAGE} lost its marker {marker}")
        markdown = markdown.replace(marker, generated)
    return markdown
