"""Prometheus metrics of our own: counters, gauges and histograms with labels, written in the
text exposition format 0.0.4 (``# HELP``/``# TYPE`` lines, ``_bucket{le=…}``, ``_sum``,
``_count``). The server serves it at ``/metrics``, the agent writes it as a node_exporter
textfile (docs/metrics.md).

Nothing here is global: each service or agent makes one ``Registry`` and keeps its metrics.
Every metric is thread-safe (the agent counts from a thread per connection). Names and label
names are checked when a metric is made, label values when one is counted: a wrong one is a
programming error (ValueError), never a line Prometheus would reject. Standard library only.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import ClassVar, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Prometheus's client libraries' default buckets, in seconds: web request latency
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Key = tuple[str, ...]  # label values, in the order of the metric's label names
M = TypeVar("M", bound="Metric")


def format_value(value: float) -> str:
    """A sample value or a bucket bound as Prometheus's Go client writes it: ``3``, ``0.25``,
    ``1e-05``, ``+Inf``, ``-Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1 << 53:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    """A label value inside its double quotes: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A ``# HELP`` text: backslash and line feed escaped (a double quote stays)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs) + "}"


class Metric(ABC):
    """One metric family: a name, its help text, its label names, and a series per set of
    label values."""

    TYPE: ClassVar[str]
    RESERVED_LABELS: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        on_change: Callable[[], None] | None,
    ) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not [a-zA-Z_:][a-zA-Z0-9_:]*")
        for label in labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"metric {name}: label name {label!r} is not allowed")
            if label in self.RESERVED_LABELS:
                raise ValueError(f"metric {name}: label name {label!r} is reserved")
        if len(set(labels)) != len(labels):
            raise ValueError(f"metric {name}: label names {list(labels)} repeat")
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._on_change = on_change
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, str]) -> Key:
        if labels.keys() != set(self.labels):
            raise ValueError(
                f"metric {self.name}: got labels {sorted(labels)}, expected {sorted(self.labels)}"
            )
        for label, value in labels.items():
            if not isinstance(value, str):
                raise ValueError(f"metric {self.name}: label {label} got {value!r}, not a string")
        return tuple(labels[label] for label in self.labels)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def names(self) -> tuple[str, ...]:
        """The sample names this family writes."""
        return (self.name,)

    def exposition(self) -> str:
        """This family's lines: ``# HELP``, ``# TYPE``, then its samples sorted by labels."""
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.TYPE}"]
        for suffix, pairs, value in self.samples():
            lines.append(f"{self.name}{suffix}{_labels_text(pairs)} {format_value(value)}")
        return "\n".join(lines) + "\n"

    @abstractmethod
    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        """(name suffix, label pairs, value) of every sample, in exposition order."""


class _Scalar(Metric):
    """A counter or a gauge: one value per series."""

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        on_change: Callable[[], None] | None,
    ) -> None:
        super().__init__(name, help, labels, on_change)
        self._values: dict[Key, float] = {} if self.labels else {(): 0.0}

    def value(self, **labels: str) -> float:
        """The series' value (0 if it was never counted or set)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        with self._lock:
            values = sorted(self._values.items())
        for key, value in values:
            yield "", tuple(zip(self.labels, key, strict=True)), value


class Counter(_Scalar):
    """Counts up. Name it ``…_total``; one without labels starts at 0."""

    TYPE = "counter"

    def inc(self, amount: float = 1.0, /, **labels: str) -> None:
        if not amount >= 0:
            raise ValueError(f"counter {self.name}: got {amount}, expected an amount >= 0")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount
        self._changed()

    def declare(self, **labels: str) -> None:
        """Make the series exist at 0 before its first count (so ``rate()`` sees that one)."""
        key = self._key(labels)
        with self._lock:
            self._values.setdefault(key, 0.0)

    def set_total(self, total: float, /, **labels: str) -> None:
        """Copy a count kept elsewhere (the kernel's CPU time of this process); it may not go
        down."""
        key = self._key(labels)
        with self._lock:
            if not total >= self._values.get(key, 0.0):
                raise ValueError(f"counter {self.name}: got {total}, below its value")
            self._values[key] = total
        self._changed()


class Gauge(_Scalar):
    """A value that goes up and down."""

    TYPE = "gauge"

    def set(self, value: float, /, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)
        self._changed()

    def replace(self, series: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """Every series at once: those not in ``series`` are gone (values read at scrape time)."""
        values = {self._key(labels): float(value) for labels, value in series}
        with self._lock:
            self._values = values
        self._changed()


class Histogram(Metric):
    """Observations counted into buckets (upper bounds, ascending; ``+Inf`` is added), with
    their sum and count. The exposition's buckets are cumulative, as Prometheus wants."""

    TYPE = "histogram"
    RESERVED_LABELS = frozenset({"le"})

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        on_change: Callable[[], None] | None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, labels, on_change)
        bounds = [float(b) for b in buckets]
        if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
            bounds.pop()
        if not bounds or any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ValueError(
                f"histogram {name}: got buckets {list(buckets)}, expected finite bounds"
            )
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"histogram {name}: buckets {list(buckets)} are not ascending")
        self.buckets = tuple(bounds)
        # per series: the count in each bucket alone (the last: above every bound), and the sum
        self._series: dict[Key, tuple[list[int], list[float]]] = {}
        if not self.labels:
            self._series[()] = ([0] * (len(bounds) + 1), [0.0])

    def names(self) -> tuple[str, ...]:
        return tuple(self.name + suffix for suffix in _HISTOGRAM_SUFFIXES)

    def observe(self, value: float, /, **labels: str) -> None:
        if math.isnan(value):
            raise ValueError(f"histogram {self.name}: got NaN")
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)  # the first bound >= value: le is <=
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[index] += 1
            total[0] += value
        self._changed()

    def count(self, **labels: str) -> int:
        """How many observations the series holds."""
        key = self._key(labels)
        with self._lock:
            counts, _ = self._series.get(key, ([0], [0.0]))
            return sum(counts)

    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        with self._lock:
            series = sorted((key, (list(c), s[0])) for key, (c, s) in self._series.items())
        bounds = [*(format_value(b) for b in self.buckets), "+Inf"]
        for key, (counts, total) in series:
            pairs = tuple(zip(self.labels, key, strict=True))
            running = 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                yield "_bucket", (*pairs, ("le", bound)), running
            yield "_sum", pairs, total
            yield "_count", pairs, running


class Registry:
    """The metrics of one service or agent, in the order they were made; ``on_change`` is
    called (outside every lock) after each count, set or observation."""

    def __init__(self, *, on_change: Callable[[], None] | None = None) -> None:
        self._on_change = on_change
        self._metrics: list[Metric] = []
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def _add(self, metric: M) -> M:
        with self._lock:
            taken = self._names.intersection(metric.names())
            if taken:
                raise ValueError(f"metric {metric.name}: {sorted(taken)[0]} is already registered")
            self._names.update(metric.names())
            self._metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels, self._on_change))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels, self._on_change))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(name, help, labels, self._on_change, buckets))

    def text(self) -> str:
        """The exposition of every metric."""
        with self._lock:
            metrics = list(self._metrics)
        return "".join(m.exposition() for m in metrics)

    def body(self) -> bytes:
        """``text()`` in UTF-8, as served with ``CONTENT_TYPE`` or written to a textfile; a
        lone surrogate in a label value (JSON can carry one) becomes "?"."""
        return self.text().encode("utf-8", "replace")
