"""Progress bars for long saves, restores and checkpoint comparisons.

    with progress(total_bytes, total_vars, f"Saving {path}") as p:
        ...
        p.advance(nbytes)            # from any thread; nvars defaults to 0
        p.advance(0, nvars=1)        # a variable is complete

A bar is drawn on stderr only when all of these hold, and `progress` is a no-op
(no import, no thread, no output) otherwise:

* `vs.config.progress` is True (the default);
* `total_bytes` exceeds `vs.config.progress_threshold_bytes` (256 MiB by default);
* the stream (stderr) is a terminal, so logs, pipes, CI and notebooks' captured
  stderr never receive escape codes;
* no other varstore bar is showing (a restore during a background save does not
  interleave two bars).

The bar shows bytes done / total, the byte rate, variables done / total and the
variable rate, and the remaining time. It is drawn by `rich`, which varstore
already has through flax (tqdm would be one more dependency for the same
result): it redraws from its own thread, so an `advance` from an I/O thread is a
lock and two additions, and it handles terminal width and non-ASCII names. rich
is imported only when a bar is actually drawn.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any, Protocol

from ._config import config

__all__ = ["Progress", "enabled", "progress"]


class Progress(Protocol):
    """What `progress` yields."""

    def advance(self, nbytes: int, nvars: int = 0) -> None:
        """Records `nbytes` more bytes and `nvars` more variables done."""


class _NoProgress:
    def advance(self, nbytes: int, nvars: int = 0) -> None:
        pass


_NO_PROGRESS = _NoProgress()
_active = threading.Lock()  # held while a bar is showing


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or replaced streams
        return False


def enabled(total_bytes: int, stream: IO[str] | None = None) -> bool:
    """Whether `progress(total_bytes, ...)` would draw a bar on `stream` (stderr)."""
    stream = sys.stderr if stream is None else stream
    return (
        config.progress
        and total_bytes > config.progress_threshold_bytes
        and _is_terminal(stream)
    )


class _Bar:
    """A rich progress bar over bytes, with a variable counter."""

    def __init__(self, total_bytes: int, total_vars: int, desc: str, stream: IO[str]):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            ProgressColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.table import Column
        from rich.text import Text

        class VarsColumn(ProgressColumn):
            def render(self, task) -> Text:
                done, total = task.fields["vars"], task.fields["total_vars"]
                elapsed = task.elapsed or 0.0
                rate = f" {done / elapsed:.0f}/s" if elapsed > 0 and done else ""
                return Text(f"{done}/{total} vars{rate}", no_wrap=True)

        def fixed() -> Column:
            return Column(no_wrap=True)

        self._lock = threading.Lock()
        self._bytes = 0
        self._vars = 0
        self._bar = Progress(
            TextColumn(
                "{task.description}",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            BarColumn(bar_width=12, table_column=Column(min_width=12, no_wrap=True)),
            TaskProgressColumn(table_column=fixed()),
            DownloadColumn(binary_units=True, table_column=fixed()),
            TransferSpeedColumn(table_column=fixed()),
            VarsColumn(table_column=fixed()),
            TimeRemainingColumn(compact=True, table_column=fixed()),
            console=Console(file=stream),
            redirect_stdout=False,  # never capture the user's prints (saves run in the background)
            redirect_stderr=False,
            refresh_per_second=8,
            expand=True,  # the description takes what the other columns leave
        )
        self._task = self._bar.add_task(desc, total=total_bytes, vars=0, total_vars=total_vars)
        self._bar.start()

    def advance(self, nbytes: int, nvars: int = 0) -> None:
        with self._lock:  # held across update, so that counts never go backwards
            self._bytes += int(nbytes)
            self._vars += int(nvars)
            self._bar.update(self._task, completed=self._bytes, vars=self._vars)

    def close(self) -> None:
        self._bar.refresh()
        self._bar.stop()


@contextlib.contextmanager
def progress(
    total_bytes: int, total_vars: int, desc: str, *, stream: IO[str] | None = None
) -> Iterator[Progress]:
    """A progress bar for an operation over `total_bytes` bytes and `total_vars`
    variables, or a no-op when `enabled` says no (see the module docstring).

    Args:
      total_bytes: bytes the operation reads or writes.
      total_vars: variables it reads or writes.
      desc: what it does, e.g. `"Restoring /ckpt/model.ckpt-1000"`.
      stream: where to draw; stderr by default.

    Yields:
      An object whose `advance(nbytes, nvars=0)` may be called from any thread.

    >>> with progress(2 << 30, 8, "Saving /tmp/model.ckpt") as p:
    ...     p.advance(256 << 20, nvars=1)
    """
    stream = sys.stderr if stream is None else stream
    if not enabled(total_bytes, stream) or not _active.acquire(blocking=False):
        yield _NO_PROGRESS
        return
    try:
        try:
            bar = _Bar(total_bytes, total_vars, desc, stream)
        except ImportError:  # rich comes with flax; without it, no bar
            yield _NO_PROGRESS
            return
        try:
            yield bar
        finally:
            bar.close()
    finally:
        _active.release()
