"""Promotion under latency: eight registrations at once while every request to the server waits 1-2 s.

The old rule (set the alias, sleep 0.3-0.6 s, read it back) assumed a round trip is short against its pause;
here each one is longer than the pause. The champion must still end on the best version, every time.
Only the registry is under test: the versions come from cheap runs with a logged metric and a stand-in
artifact, not from training.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from mnist_trainer import registry
from tests.stack.conftest import STACK_URL
from tests.support.registration import register_and_promote_at_once, scored_runs

TRAINERS = 8
REPETITIONS = 3  # each is 8 registrations through the 1-2 s delay, ~24 s; run at once, ~25 s for all three
DELAY_SECONDS = (1.0, 2.0)
HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ")


class DelayingProxy:
    """A TCP proxy on loopback that holds every HTTP request 1-2 s before passing it to the tracking server.

    The delay is applied where a request starts (a chunk beginning with an HTTP method), so a request whose
    headers and body arrive in two chunks is delayed once; answers pass straight back.
    """

    def __init__(self, target: str) -> None:
        parsed = urlparse(target)
        self.target = (parsed.hostname or "localhost", parsed.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.delayed = 0
        self.lock = threading.Lock()
        self.closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DelayingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, delay_requests: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if delay_requests and chunk.startswith(HTTP_METHODS):
                    with self.lock:
                        self.delayed += 1
                    time.sleep(random.uniform(*DELAY_SECONDS))
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def race_runs(client: MlflowClient) -> dict[str, float]:
    """Eight finished runs, each with a distinct test accuracy and a stand-in model artifact."""
    experiment_id = client.create_experiment(f"promotion-race-{uuid.uuid4().hex[:8]}")
    return scored_runs(client, experiment_id, [0.95 + index * 0.005 for index in range(TRAINERS)])


def test_champion_ends_on_the_best_version_with_every_request_delayed(
    client: MlflowClient, race_runs: dict[str, float]
) -> None:
    best = max(race_runs, key=race_runs.__getitem__)

    def race(repetition: int, slow: MlflowClient) -> tuple[dict[str, int], int, int, float]:
        """One race on a model of its own: versions by run, then the champion and challenger it ended on."""
        model = f"race-{uuid.uuid4().hex[:8]}-{repetition}"
        client.create_registered_model(model)
        order = list(race_runs)
        random.shuffle(order)  # a different run tends to arrive first each time
        started = time.perf_counter()
        versions = register_and_promote_at_once(slow, model, order, tags={"validation_status": "passed"}, timeout=300)
        seconds = time.perf_counter() - started
        champion = int(client.get_model_version_by_alias(model, registry.CHAMPION).version)
        challenger = int(client.get_model_version_by_alias(model, registry.CHALLENGER).version)
        return versions, champion, challenger, seconds

    outcomes = []
    with DelayingProxy(STACK_URL) as proxy:
        slow = MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
        # The races run at once, each on its own model: every one still sees eight registrations released
        # together through the 1-2 s delay, and the server carries all of them (more contention, not less).
        with ThreadPoolExecutor(max_workers=REPETITIONS) as pool:
            races = [pool.submit(race, repetition, slow) for repetition in range(REPETITIONS)]
            results = [future.result() for future in races]
        for repetition, (versions, champion, challenger, seconds) in enumerate(results):
            assert sorted(versions.values()) == list(range(1, TRAINERS + 1))
            # The challenger too is what the rule calls for over all eight, whatever the arrival order.
            expected = registry.decide(
                [registry.Candidate(versions[run], score) for run, score in race_runs.items()],
                registry.PromotionRule(),
            )
            outcomes.append((repetition, champion == versions[best], round(seconds, 1)))
            print(
                f"promotion race {repetition + 1}/{REPETITIONS}: champion v{champion}, best v{versions[best]}, {seconds:.1f} s"
            )
            assert champion == versions[best], outcomes
            assert (champion, challenger) == (expected.champion, expected.challenger)
        # Every request of the races went through the delay: registration, reads and alias writes.
        assert proxy.delayed >= REPETITIONS * TRAINERS * 4, proxy.delayed
    print(
        f"promotion race outcomes (repetition, champion on best, seconds): {outcomes}; {proxy.delayed} requests delayed"
    )
