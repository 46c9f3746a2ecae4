"""Exclusive locks: a second holder of a run directory or a private store is refused by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from task.locks import DirLock, LockedError, locked


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    target = tmp_path / "runs" / "demo"
    with locked(target, "run directory"):
        code = (
            "import sys; from task.locks import DirLock, LockedError\n"
            f"try: DirLock({str(target)!r}, 'run directory').acquire()\n"
            "except LockedError as e: print(e); sys.exit(3)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 3, out.stderr
        assert "run directory" in out.stdout and "in use by pid" in out.stdout
    again = DirLock(target, "run directory").acquire()  # released: free again
    again.release()
    assert not target.exists() or not any(target.iterdir())  # the lock lives beside it
    assert (tmp_path / "runs" / "demo.lock").stat().st_mode & 0o777 == 0o600


def test_the_same_process_cannot_take_it_twice(tmp_path):
    with locked(tmp_path / "store", "private store"), pytest.raises(LockedError):
        DirLock(tmp_path / "store", "private store").acquire()
