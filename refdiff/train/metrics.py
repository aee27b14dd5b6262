"""Training metrics as JSON lines, and a hand-written progress bar on stderr (no tqdm)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from collections.abc import Callable

__all__ = ["MetricsWriter", "read_metrics", "ProgressBar", "format_duration"]


def _jsonable(v: Any) -> Any:
    """Floats that JSON cannot hold (NaN, inf) become None; NumPy scalars become Python numbers."""
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class MetricsWriter:
    """Append one JSON object per line to ``path`` (flushed after every record).

    Non-finite floats are written as ``null`` (strict JSON). ``append=False`` truncates the file.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO | None = open(self.path, "a" if append else "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line."""
        if self._fh is None:
            raise ValueError(f"metrics file {self.path} is closed")
        self._fh.write(json.dumps(_jsonable(record), allow_nan=False, sort_keys=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a JSON-lines metrics file (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def format_duration(seconds: float) -> str:
    """``MM:SS`` or ``H:MM:SS``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """A one-line progress bar on ``stream`` (default stderr).

    On a terminal it redraws in place (carriage return) at most every ``min_interval`` seconds; on
    anything else (a log file, a pipe) it prints a full line at most every ``line_interval``
    seconds, so logs stay readable. ``enabled=False`` makes every call a no-op.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        unit: str = "step",
        stream: TextIO | None = None,
        width: int = 24,
        enabled: bool = True,
        min_interval: float = 0.1,
        line_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = int(total)
        self.n = self.start_n = int(initial)
        self.desc, self.unit, self.width = desc, unit, int(width)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = min_interval if self.tty else line_interval
        self.clock = clock
        self.t0 = self._last = clock()
        self._last_n = -1
        self.postfix: dict[str, Any] = {}
        self._closed = False
        if self.enabled:
            self._draw(force=True)

    def render(self) -> str:
        """The current line (without carriage return or newline)."""
        frac = min(1.0, self.n / self.total) if self.total > 0 else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + ("." * (self.width - filled))
        elapsed = self.clock() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.n) / rate if done > 0 and rate > 0 else float("nan")
        rate_s = f"{rate:.2f} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s"
        post = " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        line = (
            f"{self.desc} {frac * 100:3.0f}%|{bar}| {self.n}/{self.total} "
            f"[{format_duration(elapsed)}<{format_duration(eta)}, {rate_s}]"
        )
        return f"{line} {post}" if post else line

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and (now - self._last < self.interval or self.n == self._last_n):
            return
        self._last, self._last_n = now, self.n
        line = self.render()
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` and set the values shown after the bar (e.g. ``loss=0.03``)."""
        if not self.enabled or self._closed:
            return
        self.n += int(n)
        if postfix:
            self.postfix.update(postfix)
        self._draw(force=self.n >= self.total)

    def set(self, n: int, total: int | None = None) -> None:
        """Jump to position ``n`` (and optionally change the total)."""
        if not self.enabled or self._closed:
            return
        if total is not None:
            self.total = int(total)
        self.n = int(n)
        self._draw(force=self.n >= self.total)

    def set_postfix(self, **postfix: Any) -> None:
        """Set the values shown after the bar without advancing."""
        self.postfix.update(postfix)

    def write(self, message: str) -> None:
        """Print a message on its own line without breaking the bar."""
        if not self.enabled:
            print(message, file=self.stream, flush=True)
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        if self.tty and not self._closed:
            self.stream.write(self.render())
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if not self.enabled or self._closed:
            return
        if self.n != self._last_n:
            self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)
