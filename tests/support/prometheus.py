"""Reading the tracking server's Prometheus text exposition (/metrics)."""

from __future__ import annotations

import re
import urllib.request


def scrape(base_url: str) -> str:
    """The text of `base_url`/metrics; AssertionError unless it answers 200."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as response:
        assert response.status == 200
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total
