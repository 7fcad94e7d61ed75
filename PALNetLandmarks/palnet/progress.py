"""A dependency-free progress bar for the command line, and event lines for programs that follow it.

An event line is :data:`EVENT_PREFIX` and one JSON object with an ``"event"`` key, e.g. what
``palnet train --events`` prints after each epoch (see train.fit)::

    @palnet {"epoch": 3, "loss": 11.2, "val_pointwise_mm": 8.61, ..., "best": true, "event": "epoch"}
"""
import json
import sys
import time
from typing import Optional, TextIO

EVENT_PREFIX = "@palnet "  # begins every event line, and no log line


def event_line(event: str, **fields) -> str:
    """One event line: EVENT_PREFIX and the JSON object of ``fields`` with ``"event": event``."""
    return EVENT_PREFIX + json.dumps(dict(fields, event=event))


def parse_event(line: str) -> Optional[dict]:
    """The event of one output line (see :func:`event_line`), or None for any other line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class ProgressBar:
    """``bar(done, total, item=None, error=None)``: redraws one line on a terminal, prints lines otherwise."""

    def __init__(self, label: str, stream: Optional[TextIO] = None, width: int = 28):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int, item: Optional[str] = None, error: Optional[str] = None):
        if error:
            self._line("{}: {}".format(item, error) if item else error, newline=True)
        now = time.monotonic()
        if done < total and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last = now
        elapsed = now - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        fill = int(self.width * done / max(total, 1))
        text = "{} [{}{}] {}/{}  {:.0f}s elapsed, {:.0f}s left".format(
            self.label, "#" * fill, "." * (self.width - fill), done, total, elapsed, eta)
        self._line(text, newline=done >= total or not self.tty)

    def _line(self, text: str, newline: bool):
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if newline else ""))
        elif newline:
            self.stream.write(text + "\n")
        self.stream.flush()
