"""docs/performance.md from the JSON results of the benchmarks (docs/bench-results/): a summary against the
targets, then one section per benchmark with its table and what limits it.

    python -m bench.report          # scripts/bench.sh runs it last; BENCH_SECONDS adds the `make bench` row

The prose is the template bench/performance.md.j2; this module only loads the results and works out the numbers
the template needs (medians over repeats, ratios, the rows of a K), so that an edit of the text is an edit of
the template and a new number is a new key here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jinja2

from bench.common import RESULTS_DIR

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
TEMPLATE = Path(__file__).resolve().with_name("performance.md.j2")
CORES_HERE = 2
FASTTRACKML = "FastTrackML 0.6.0"
SHIPPED = "stack, fast store"
# The side-by-side variants with logins and TLS (bench/team_variants.py), compared with SHIPPED (no logins) and
# FastTrackML: throughput at least FastTrackML's, server CPU per request within TEAM_CPU_LIMIT of no logins.
TEAM_MODES = ("team mode, basic", "team mode, OIDC token")
TEAM_CPU_LIMIT = 1.3


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def cpu_total(row: dict[str, Any]) -> float:
    return float(sum(row.get("cpu_ms_per_request", {}).values()))


def cpu(row: dict[str, Any]) -> str:
    """CPU ms per request of the server, Postgres and the load generator: '10.0 + 3.4 + 1.3'."""
    shares = row.get("cpu_ms_per_request", {})
    parts = [shares.get(role) for role in ("tracking_server", "postgres", "load_generator")]
    return " + ".join("?" if part is None else f"{part:.1f}" for part in parts)


def shares(by_family: dict[str, float], most: int) -> str:
    """The first `most` families of a profile with their share: 'Flask / Werkzeug 30 %, ...'."""
    return ", ".join(f"{name} {share * 100:.0f} %" for name, share in list(by_family.items())[:most])


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def side_by_side_medians(side: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(server, K) -> medians over the repeats, with the load averages seen during them."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in side["rows"]:
        grouped.setdefault((row["server"], row["k"]), []).append(row)
    medians = {}
    for key, rows in grouped.items():
        used = [row["cpu_ms_per_request"] for row in rows]
        medians[key] = {
            "repeats": len(rows),
            "requests_per_second": round(_median([r["requests_per_second"] for r in rows]), 1),
            "p50": round(_median([r["latency_ms_p50"] for r in rows]), 1),
            "p99": round(_median([r["latency_ms_p99"] for r in rows]), 1),
            "errors": sum(r["errors"] for r in rows),
            "server_cpu_ms": round(_median([c.get("tracking_server", 0.0) for c in used]), 2),
            "postgres_cpu_ms": round(_median([c.get("postgres", 0.0) for c in used]), 2),
            # Only behind a gateway (team mode): what ending TLS costs.
            "gateway_cpu_ms": round(_median([c["gateway"] for c in used]), 2)
            if all("gateway" in c for c in used)
            else None,
            "load_min": min(min(r["load_average_1m_before"], r["load_average_1m_after"]) for r in rows),
            "load_max": max(max(r["load_average_1m_before"], r["load_average_1m_after"]) for r in rows),
        }
    return medians


def team_rows(side: dict[str, Any]) -> list[dict[str, Any]]:
    """Per K: no logins, each team mode and FastTrackML, with the team modes' ratios to FastTrackML's
    throughput and to the server CPU per request without logins."""
    medians = side_by_side_medians(side)
    rows = []
    for k in side["ks"]:
        shipped, peer = medians.get((SHIPPED, k)), medians.get((FASTTRACKML, k))
        for server in (SHIPPED, *TEAM_MODES, FASTTRACKML):
            m = medians.get((server, k))
            if not m:
                continue
            said = {r.get("fast_path", "") for r in side["rows"] if r["server"] == server and r["k"] == k} - {""}
            row: dict[str, Any] = {"server": server, "k": k, "m": m, "team": server in TEAM_MODES,
                                   "fast_path": "; ".join(sorted(said))}  # fmt: skip
            if peer:
                row["throughput_vs_fasttrackml"] = m["requests_per_second"] / max(peer["requests_per_second"], 0.1)
            if shipped:
                row["cpu_vs_no_logins"] = m["server_cpu_ms"] / max(shipped["server_cpu_ms"], 0.01)
            rows.append(row)
    return rows


def _newest_side_by_side(results: dict[str, Any]) -> dict[str, Any] | None:
    """The newer of the side-by-side runs: the fast HTTP path's last build if it ran after server_side_by_side."""
    side, fast_http = results["side_by_side"], results["fast_http"]
    if fast_http and (not side or fast_http["runs"][-1]["side"]["machine"]["date"][:16] > side["machine"]["date"][:16]):
        newest: dict[str, Any] = fast_http["runs"][-1]["side"]
        return newest
    return side


def context(results: dict[str, Any]) -> dict[str, Any]:
    """What the template reads: every result by name, and the numbers worked out from them."""
    shipped, default, paced = results["shipped"], results["default"], results["paced"]
    load_results = [r for r in (shipped, paced, default) if r]
    throughput_ratios = []
    if shipped and default:
        throughput_ratios = [
            {"k": ours["k"], "ratio": ours["requests_per_second"] / max(theirs["requests_per_second"], 0.1)}
            for ours, theirs in zip(shipped["rows"], default["rows"], strict=False)
        ]
    fasttrackml_rows = []
    newest = _newest_side_by_side(results)
    if newest:
        medians = side_by_side_medians(newest)
        for k in newest["ks"]:
            ours, peer = medians.get((SHIPPED, k)), medians.get((FASTTRACKML, k))
            if ours and peer:
                ratio = ours["server_cpu_ms"] / max(peer["server_cpu_ms"], 0.01)
                fasttrackml_rows.append({"k": k, "ours": ours, "peer": peer, "ratio": ratio})
    side = results["side_by_side"]
    fast_http_runs = []
    for run in results["fast_http"]["runs"] if results["fast_http"] else []:
        ordered = sorted(
            side_by_side_medians(run["side"]).items(), key=lambda item: (item[0][1], item[0][0] != SHIPPED)
        )
        fast_http_runs.append(
            {
                "build": run["build"],
                "date": run["side"]["machine"]["date"],
                "medians": [(s, k, m) for (s, k), m in ordered],
            }
        )
    start = results["start"]
    search = results["search"]
    first = next((r for r in results.values() if isinstance(r, dict)), None)
    return {
        **results,
        "machine": first["machine"] if first else None,
        "cores_here": CORES_HERE,
        "k64": next((r for r in shipped["rows"] if r["k"] == 64), None) if shipped else None,
        "throughput_ratios": throughput_ratios,
        "fasttrackml_rows": fasttrackml_rows,
        "slowest_search": max(row["seconds_median"] for row in search["rows"]) if search else None,
        "bench_minutes": results["bench_seconds"] / 60 if results["bench_seconds"] else None,
        "load_results": load_results,
        "load_dates": [f"{r['label']} {r['machine']['date']}" for r in load_results if "machine" in r],
        "load_errors": sorted({kind for r in load_results for row in r["rows"] for kind in row["error_kinds"]}),
        "side_by_side_medians": side_by_side_medians(side) if side else {},
        "side_by_side_servers": list(dict.fromkeys(row["server"] for row in side["rows"])) if side else [],
        "team_rows": team_rows(side) if side else [],
        "team_cpu_limit": TEAM_CPU_LIMIT,
        "fast_http_runs": fast_http_runs,
        "start_order": ", ".join(f"{s} {t}" for s, t in start.get("service_ready_seconds_median", {}).items())
        if start
        else "",
        "start_images": [
            (
                image,
                size,
                ", ".join(f"{n} {mb:.0f}" for n, mb in start.get("largest_packages_mb", {}).get(image, {}).items()),
            )
            for image, size in start["image_size_mb"].items()
        ]
        if start
        else [],
    }


def render(results: dict[str, Any]) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,  # a key the results lack fails the report instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    environment.filters["fmt"] = format  # {{ value|fmt("+.1f") }} is format(value, "+.1f")
    environment.globals.update(cpu=cpu, cpu_total=cpu_total, shares=shares)
    text = environment.get_template(TEMPLATE.name).render(context(results))
    return text.rstrip("\n") + "\n"


def main() -> None:
    results: dict[str, Any] = {
        "overhead": load("tracking_overhead"),
        "pipeline": load("input_pipeline"),
        "start": load("stack_start"),
        "determinism": load("determinism"),
        "search": load("search_runs"),
        "shipped": load("server_load_shipped"),
        "paced": load("server_load_shipped-paced"),
        "default": load("server_load_mlflow-defaults"),
        "tuning": load("server_tuning"),
        "side_by_side": load("server_side_by_side"),
        "profile": load("log_batch_profile"),
        "large_artifact": load("large_artifact"),
        # MLflow's own artifact handlers, measured once before streaming replaced them (kept for comparison).
        "large_artifact_before": load("large_artifact_before"),
        "fast_http": load("server_fast_http"),
        "per_call": load("server_cpu_per_call"),
        "bench_seconds": float(os.environ.get("BENCH_SECONDS", "0")) or None,
    }
    DOC.write_text(render(results))
    print(f"bench: wrote {DOC}")


if __name__ == "__main__":
    main()
