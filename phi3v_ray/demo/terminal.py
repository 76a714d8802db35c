"""The demo's terminal: one line per stage with its counts and time; everything else goes to a log file.

Ray Data's INFO lines and progress bars, Tune's trial tables, DeepSpeed and library warnings are written by Ray and
the libraries straight to the process's stdout and stderr (and by processes this one starts, which inherit them).
So the demo points file descriptors 1 and 2 at `<out>/logs/demo.log` for its whole run and writes its own lines to
a duplicate of the original stdout: the terminal shows the demo, the log file shows everything, and the demo says
where it is. On an interactive terminal a stage's line is live (elapsed time, progress) and is replaced by its
summary; piped, only the summary line is written, so a log of the run has exactly one line per stage.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

STAGE_PREFIX = "["  # summary lines look like "[3/6] prepare    ..."
TICK_S = 0.5


def format_seconds(seconds: float) -> str:
    """`42s` or `3m07s`: short enough for a stage line."""
    whole = int(round(seconds))
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60:02d}s"


@dataclass
class Stage:
    """One running stage: its live progress text, and the summary it ends with."""

    number: int
    total: int
    name: str
    started: float = field(default_factory=time.perf_counter)
    progress: str = ""
    summary: str = ""

    def head(self) -> str:
        return f"[{self.number}/{self.total}] {self.name:<10}"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class DemoTerminal:
    """Owns the real stdout while the demo runs; `echo` writes to it, anything else printed goes to the log file."""

    def __init__(self, stream: IO[str], interactive: bool, log_path: Path | None = None) -> None:
        self.stream = stream
        self.interactive = interactive
        self.log_path = log_path
        self._live: Stage | None = None
        self._lock = threading.Lock()

    def echo(self, text: str = "") -> None:
        """A line for the person at the terminal (also kept in the log, where it gives context)."""
        with self._lock:
            self._clear_live()
            self.stream.write(text + "\n")
            self.stream.flush()
            self._draw_live()
        print(text, flush=True)  # fd 1 is the log file while the demo runs

    def set_progress(self, text: str) -> None:
        """The running stage's progress (e.g. `412/1000 steps, loss 1.93`); shown live on a terminal only."""
        if self._live is not None:
            self._live.progress = text

    @contextmanager
    def stage(self, number: int, total: int, name: str) -> Iterator[Stage]:
        """Run one stage: a live line on a terminal, then one summary line (or an `interrupted` line on Ctrl-C)."""
        current = Stage(number, total, name)
        print(f"\n===== {current.head().strip()} =====", flush=True)
        stop = threading.Event()
        ticker = None
        with self._lock:
            self._live = current
            self._draw_live()
        if self.interactive:
            ticker = threading.Thread(target=self._tick, args=(stop,), daemon=True)
            ticker.start()
        try:
            yield current
        except KeyboardInterrupt:
            self._finish(current, stop, ticker, f"interrupted after {format_seconds(current.elapsed())}")
            raise
        except BaseException:
            self._finish(current, stop, ticker, f"failed after {format_seconds(current.elapsed())}")
            raise
        self._finish(current, stop, ticker, f"{current.summary}  ({format_seconds(current.elapsed())})")

    def _finish(
        self, current: Stage, stop: threading.Event, ticker: threading.Thread | None, text: str
    ) -> None:
        stop.set()
        if ticker is not None:
            ticker.join()
        with self._lock:
            self._clear_live()
            self._live = None
        self.echo(f"{current.head()} {text}")

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(TICK_S):
            with self._lock:
                self._draw_live()

    def _draw_live(self) -> None:
        if not self.interactive or self._live is None:
            return
        live = self._live
        text = f"{live.head()} {format_seconds(live.elapsed())}" + (
            f"  {live.progress}" if live.progress else ""
        )
        self.stream.write("\r\033[K" + text)
        self.stream.flush()

    def _clear_live(self) -> None:
        if self.interactive and self._live is not None:
            self.stream.write("\r\033[K")


@contextmanager
def demo_terminal(log_path: Path) -> Iterator[DemoTerminal]:
    """Send this process's stdout and stderr (file descriptors, so child processes and C code too) to `log_path`
    until the block ends; yield the terminal that still reaches the original stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed below, after fds are back
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield DemoTerminal(terminal, terminal.isatty(), log_path)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        log.close()
        terminal.close()
