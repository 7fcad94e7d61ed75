"""A dependency-free progress bar for the command line."""
import sys
import time
from typing import Optional, TextIO


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
