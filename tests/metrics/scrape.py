"""Reading a real /metrics endpoint over HTTP."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One scrape: every sample, by sample name (`x_total`, `x_bucket`...)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (sample_labels, value)
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum over the series matching `labels` (0 if none)."""
        return sum(value for _, value in self.series(name, **labels))

    def label_values(self, name: str, label: str) -> set[str]:
        return {labels[label] for labels, _ in self.series(name) if label in labels}


def scrape(port: int, host: str = "127.0.0.1") -> Scrape:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.read().decode())


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefixed(names: Iterable[str]) -> set[str]:
    return {n for n in names if n.startswith("askmojo_")}
