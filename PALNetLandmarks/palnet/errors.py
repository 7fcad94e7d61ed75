"""The one exception type for problems with the user's input."""
from typing import Optional, Union
import os


class PalnetError(Exception):
    """A problem the user can fix, reported as one line that names the file.

    The command line prints ``str(error)`` and exits with status 2 instead of
    showing a traceback; the Slicer module shows the same line in a dialog.
    """

    def __init__(self, message: str, path: Optional[Union[str, os.PathLike]] = None):
        self.message = " ".join(str(message).split())  # always one line
        self.path = None if path is None else os.fspath(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "{}: {}".format(self.path, self.message) if self.path else self.message
