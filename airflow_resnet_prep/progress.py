"""Progress lines for long work: count, rate and ETA, at most one line every few seconds."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("airflow_resnet_prep")


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts units of work (images, bytes) and logs ``label: done/total, rate/s, ETA`` every ``interval`` s.

    ``total=0`` means the total is not known in advance: the line then shows the count and rate only.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "images",
        interval: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.log = logger or log
        self.done = 0
        self.start = time.monotonic()
        self._next = self.start + interval

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        if not self.total:  # an unknown total (e.g. members of an archive being indexed): no ETA
            return f"{self.label}: {self.done:,} {self.unit}, {rate:,.0f} {self.unit}/s, elapsed {format_duration(elapsed)}"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = format_duration(eta) if eta != float("inf") else "?"
        pct = 100.0 * self.done / self.total
        return (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%), "
            f"{rate:,.0f} {self.unit}/s, elapsed {format_duration(elapsed)}, ETA {eta_s}"
        )

    def finish(self) -> float:
        """Log the closing line and return the elapsed seconds."""
        elapsed = time.monotonic() - self.start
        self.log.info("%s (done)", self.line())
        return elapsed
