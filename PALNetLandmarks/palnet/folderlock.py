"""The lock file that keeps a second palnet run out of a folder that one is writing into.

``take_lock(folder)`` creates ``folder/.palnet.lock`` holding this process's id, or raises
PalnetError naming the run that holds it; a lock left by a run that has ended (killed, or
from before a restart) is taken over. ``release_lock`` removes it.
"""
import os
import time
from pathlib import Path
from typing import Set

from .errors import PalnetError

LOCK_NAME = ".palnet.lock"

_HELD: Set[str] = set()  # locks this process holds: its own pid in another lock is a dead run's


def take_lock(out_dir: Path) -> Path:
    """Create ``out_dir/.palnet.lock`` holding this pid; one left by a run that has ended is taken over."""
    path = Path(out_dir) / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            text, owner = _lock_owner(path)
            if owner:
                raise PalnetError("another palnet run ({}) is writing into this folder; wait for it to end, or "
                                  "delete {} if that run is gone".format(owner, LOCK_NAME), out_dir) from None
            if text is not None:
                _remove_stale_lock(path, text)
            continue
        except OSError as exc:
            raise PalnetError("cannot write into the output folder ({})".format(exc.strerror or exc), out_dir) \
                from None
        with os.fdopen(fd, "w") as f:
            f.write("{}\n".format(os.getpid()))
        _HELD.add(os.path.abspath(str(path)))
        return path
    raise PalnetError("cannot take the lock {} of this folder".format(LOCK_NAME), out_dir)


def release_lock(path: Path) -> None:
    """Remove the lock ``take_lock`` returned, unless another run has taken it over meanwhile."""
    _HELD.discard(os.path.abspath(str(path)))
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
    except (OSError, IndexError):
        pass


def _lock_owner(path: Path):
    """(the lock's text or None if it vanished, a description of its live owner or "" if none)."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError):
        return "", "unreadable lock"
    try:
        pid = int(text.split()[0])
    except (IndexError, ValueError):
        # A run writes its pid right after creating the file: a new empty lock is still being taken.
        return text, "just starting" if age < 10 else ""
    if pid == os.getpid():
        held = os.path.abspath(str(path)) in _HELD
        return text, "process {}, this one".format(pid) if held else ""
    return text, "process {}".format(pid) if _pid_alive(pid) else ""


def _remove_stale_lock(path: Path, seen: str) -> None:
    # Moved aside first, not deleted: two runs taking over the same stale lock must not
    # delete the new lock of the one that was quicker; that one gets it back.
    aside = path.with_name("{}.{}.stale".format(LOCK_NAME, os.getpid()))
    try:
        os.replace(str(path), str(aside))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PalnetError("cannot remove the lock left by an earlier run ({})".format(exc.strerror or exc),
                          path) from None
    try:
        if aside.read_text() != seen:
            try:
                os.link(str(aside), str(path))
            except OSError:
                pass
    finally:
        aside.unlink()


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        import ctypes
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True
