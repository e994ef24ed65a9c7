"""Where the running tracking server's CPU goes, end to end, under the load benchmark: uvicorn, FastAPI/Starlette,
the ASGI-to-WSGI bridge, Flask, MLflow's handlers, protobuf, the store, the driver.

    python -m bench.profile_server LABEL [K] [SECONDS]

Samples every uvicorn worker of the stack's tracking-server container with py-spy (from the host: it needs root
or CAP_SYS_PTRACE over the container's processes; `pip install py-spy`, bench/requirements.txt) while
`bench.server_load` runs K closed-loop trainers against it, and reports the share of the samples by the package
of the innermost Python frame of the thread holding the GIL, leaving out the frames of waiting threads
(IDLE_FRAMES). C code holding the GIL is counted in the Python function that called it (psycopg2 building a
statement shows up in the store that called it; uvloop's own loop is left out with the idle loop). Writes
docs/bench-results/server_profile_LABEL.json.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import save
from bench.server_load import load_and_print, stack_containers

RATE = 100
# Families by the innermost frame's file (first match wins). Order: specific before general.
FAMILIES = (
    ("stack: fast HTTP path", ("mlflow_stack_server/fast_http.py",)),
    ("stack: fast store (incl. psycopg2 calls)", ("mlflow_stack_server/fast_store.py",)),
    ("stack: request metrics (prometheus_client)", ("mlflow_stack_server/request_metrics.py", "prometheus_client/")),
    ("stack: other wrappers", ("mlflow_stack_server/",)),
    ("psycopg2 / SQLAlchemy", ("psycopg2/", "sqlalchemy/")),
    ("ASGI-to-WSGI bridge", ("starlette/middleware/wsgi.py", "mlflow/server/fastapi_app.py")),
    ("FastAPI / Starlette middlewares and router", ("starlette/", "fastapi/", "mlflow/server/fastapi_security.py")),
    ("uvicorn and HTTP parsing (h11/httptools)", ("uvicorn/", "h11/", "httptools/")),
    ("anyio / asyncio (thread hops, event loop)", ("anyio/", "asyncio/", "concurrent/futures/", "threading.py")),
    ("Flask / Werkzeug", ("flask/", "werkzeug/", "flask_cors/")),
    ("protobuf", ("google/protobuf/",)),
    ("MLflow handlers, validation, entities", ("mlflow/",)),
    ("json", ("json/",)),
    ("logging", ("logging/",)),
)
# Innermost frames of a thread that waits (py-spy cannot tell idle threads inside a container from the host, and
# --gil counts the GIL's last holder while the event loop sleeps): an anyio worker waiting for work, the event
# loop in epoll (or in uvloop's C loop, entered from Runner.run), the uvicorn supervisor's pipe.
IDLE_FRAMES = (
    "Condition.wait (threading.py",
    "EpollSelector.select (selectors.py",
    "Connection._recv (multiprocessing/connection.py",
    "Event.wait (threading.py",
    "Runner.run (asyncio/runners.py",
    "sleep (",
)
FRAME_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)$")


def family(frame: str) -> str:
    match = FRAME_FILE.search(frame)
    where = match.group(1) if match else frame
    for name, markers in FAMILIES:
        if any(marker in where for marker in markers):
            return name
    return "other (Python runtime, stdlib)"


def worker_pids(container: str) -> list[int]:
    top = subprocess.run(["docker", "top", container, "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [int(line.split()[0]) for line in top.stdout.splitlines()[1:] if "spawn_main" in line]


def record(py_spy: str, pids: list[int], seconds: int, folder: Path) -> list[subprocess.Popen[bytes]]:
    options = ["--rate", str(RATE), "--duration", str(seconds), "--nonblocking", "--format", "raw"]
    # --gil: only the thread holding the GIL, i.e. Python's CPU, not psycopg2 waiting for Postgres.
    return [
        subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), *options, "--gil", "--output", str(folder / f"{pid}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


def summarize(folder: Path) -> dict[str, Any]:
    """Shares by family and the busiest frames, from py-spy's raw (collapsed) stacks in `folder`."""
    samples: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    idle_samples = 0
    for output in folder.glob("*.txt"):
        for line in output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            innermost = stack.split(";")[-1]
            if not stack:
                continue
            if any(idle in innermost for idle in IDLE_FRAMES):
                idle_samples += int(count)
            else:
                samples[family(innermost)] += int(count)
                frames[innermost.split("site-packages/")[-1]] += int(count)
    total = sum(samples.values()) or 1
    return {
        "samples": total,
        "idle_samples": idle_samples,
        "share_by_family": {name: round(count / total, 3) for name, count in samples.most_common()},
        "top_frames": [(frame, round(count / total, 3)) for frame, count in frames.most_common(15)],
    }


def main() -> None:
    """LABEL [K] [SECONDS]: record and summarize; LABEL --samples DIR: summarize a recording again."""
    label = sys.argv[1]
    if sys.argv[2:3] == ["--samples"]:
        result = {"samples_from": sys.argv[3], **summarize(Path(sys.argv[3]))}
    else:
        k = int(sys.argv[2]) if len(sys.argv) > 2 else 8
        seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 30
        py_spy = shutil.which("py-spy")
        if not py_spy:
            raise SystemExit("bench: no py-spy on PATH (pip install py-spy, see bench/requirements.txt)")
        containers = stack_containers()
        server = containers["tracking_server"]
        if not server:
            raise SystemExit("bench: the stack's tracking-server is not running")
        folder = Path(tempfile.mkdtemp(prefix="server-profile-"))
        recorders = record(py_spy, worker_pids(server), seconds, folder)
        rows: list[dict[str, Any]] = []
        # The load stops starting calls when the recorders stop.
        driver = threading.Thread(target=lambda: rows.append(load_and_print(label, k, containers, deadline=seconds)))
        driver.start()
        for recorder in recorders:
            recorder.wait()
        driver.join()
        result = {"k": k, "seconds": seconds, "rate_hz": RATE, **summarize(folder), "load": rows[0] if rows else None}
    print(f"bench: server profile {label}: {result['samples']} busy samples ({result['idle_samples']} idle)")
    for name, share in result["share_by_family"].items():
        print(f"bench:   {share * 100:5.1f} %  {name}")
    for frame, share in result["top_frames"]:
        print(f"bench:   {share * 100:5.1f} %  {frame}")
    save(f"server_profile_{label}", result)


if __name__ == "__main__":
    main()
