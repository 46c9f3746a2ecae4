"""The node-local warm worker (issue 27): the same results as in-process for every client kind,
the fallbacks (no worker, a dead one, other code), and a private socket."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from client_app import entry, warm
from client_app.app import build_app as build_in_process_app
from server_app.loop import run_server
from testkit.grid import InProcessGrid, task_identity
from tests.reliability.helpers import rows, setup_run

REPO = Path(__file__).resolve().parents[2]
TIMING = ("time", "seconds", "at-", "at_", "wall", "_s")


def _start_worker(directory: Path, idle_exit: float = 300) -> subprocess.Popen:
    proc = warm.spawn(directory, idle_exit)  # as the ClientApp starts one (log: worker.log)
    deadline = time.monotonic() + 120
    while warm.request(directory, "ping") is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the worker did not start (rc {proc.poll()})")
        time.sleep(0.2)
    return proc


def _stop(directory: Path, proc: subprocess.Popen) -> None:
    warm.request(directory, "stop")
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _federate(cfg: dict, app) -> list[dict]:
    grid = InProcessGrid(app, cfg, cfg["data.num-clients"])
    with task_identity():
        run_server(grid, cfg)
    return rows(cfg)


def _results(value):
    """A metrics row without its timings (what a faster path may change)."""
    if isinstance(value, dict):
        return {
            k: _results(v)
            for k, v in value.items()
            if not any(t in k for t in TIMING) and not k.endswith("_at")
        }
    if isinstance(value, list):
        return [_results(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _served(directory: Path) -> int:
    log = directory / "worker.log"
    return log.read_text().count(" done") if log.is_file() else 0


@pytest.mark.parametrize("method", ["fedrsclip", "pfedmoap", "fedavg-full"])
def test_the_worker_gives_the_in_process_results_bit_for_bit(tmp_path, tiny_clip_dir, method):
    """One method of each client kind (prompt, moe, full): every metric of a 2-round federation
    run through the worker equals the in-process run's, and the worker ran every message."""
    common = {"server.num-rounds": 2, "method.name": method}
    base = setup_run(tmp_path / "in", tiny_clip_dir, **common)
    warm_cfg = setup_run(
        tmp_path / "warm", tiny_clip_dir, **common, **{"client.warm-worker": "external"}
    )
    directory = warm.prepare_dir(warm.worker_dir(warm_cfg["client.private-dir"]))
    proc = _start_worker(directory)
    try:
        expected = _federate(base, build_in_process_app())
        got = _federate(warm_cfg, entry.build_app())
    finally:
        _stop(directory, proc)
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected, strict=True):
        a, b = _results(a), _results(b)
        assert a.keys() == b.keys()
        assert {k: a[k] for k in a if a[k] != b[k]} == {k: b[k] for k in b if a[k] != b[k]}
    # 3 nodes x (2 fused train + 1 final evaluate), plus pfedmoap's partition queries if any.
    assert _served(directory) >= 9


def test_no_worker_runs_in_process_and_auto_starts_one(tmp_path, tiny_clip_dir):
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 1})
    cfg["client.warm-worker"] = "external"
    directory = warm.worker_dir(cfg["client.private-dir"])
    expected = _federate(
        setup_run(tmp_path / "ref", tiny_clip_dir, **{"server.num-rounds": 1}),
        build_in_process_app(),
    )
    assert [_results(r) for r in _federate(cfg, entry.build_app())] == [
        _results(r) for r in expected
    ]
    assert warm.request(directory, "ping") is None  # external: never started by the ClientApp

    cfg_auto = setup_run(tmp_path / "auto", tiny_clip_dir, **{"server.num-rounds": 1})
    cfg_auto["client.warm-worker"] = "auto"
    auto_dir = warm.worker_dir(cfg_auto["client.private-dir"])
    try:
        _federate(cfg_auto, entry.build_app())  # the first message starts it
        deadline = time.monotonic() + 120
        while (answer := warm.request(auto_dir, "ping")) is None:
            assert time.monotonic() < deadline, (auto_dir / "worker.log").read_text()
            time.sleep(0.2)
        assert answer["digest"] == warm.code_digest()
        mode = stat.S_IMODE((auto_dir / warm.SOCKET_NAME).stat().st_mode)
        assert mode == 0o600 and stat.S_IMODE(auto_dir.stat().st_mode) == 0o700
    finally:
        warm.request(auto_dir, "stop")


def _fake_worker(directory: Path, answer: bytes | None) -> threading.Thread:
    """A socket that takes one request and then closes (a dying worker) or answers ``answer``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(directory / warm.SOCKET_NAME))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            warm.recv_json(conn)
            if answer is not None:
                warm.send_frame(conn, answer)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("answer", [None, b'{"stale": true}'], ids=["dies", "stale"])
def test_a_worker_that_dies_or_runs_other_code_is_not_used(tmp_path, answer):
    from flwr.app import Context, Message, RecordDict

    directory = warm.prepare_dir(tmp_path / "w")
    thread = _fake_worker(directory, answer)
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with task_identity():
        msg = Message(RecordDict(), dst_node_id=1, message_type="query")
    assert warm.forward(directory, "query", msg, ctx, {}) is None
    thread.join(10)


def test_a_stale_socket_file_or_no_socket_is_no_worker(tmp_path):
    from flwr.app import Context, Message, RecordDict

    directory = warm.prepare_dir(tmp_path / "w")
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with task_identity():
        msg = Message(RecordDict(), dst_node_id=1, message_type="query")
    assert warm.forward(directory, "query", msg, ctx, {}) is None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(directory / warm.SOCKET_NAME))
    s.close()  # the file stays, nobody listens
    assert warm.forward(directory, "query", msg, ctx, {}) is None


def test_the_directory_must_be_private(tmp_path):
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(warm.WorkerError, match="chmod 700"):
        warm.prepare_dir(d)
    rc = subprocess.run(
        [sys.executable, "-m", "client_app.worker", "serve", "--dir", str(d)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert rc.returncode == 2 and "chmod 700" in rc.stderr


def test_a_handler_error_is_raised_as_in_process(tmp_path, tiny_clip_dir):
    """The worker's handler raises (no partition-id): the ClientApp raises the same error."""
    from flwr.app import Context, Message, RecordDict

    cfg = setup_run(tmp_path, tiny_clip_dir)
    directory = warm.prepare_dir(warm.worker_dir(cfg["client.private-dir"]))
    proc = _start_worker(directory)
    try:
        ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=cfg)
        with task_identity():
            msg = Message(RecordDict(), dst_node_id=1, message_type="query")
        with pytest.raises(ValueError, match="partition-id"):
            warm.forward(
                directory,
                "query",
                msg,
                ctx,
                {"at-process-start": 0.0, "at-imports-start": 0.0, "at-imports-done": 0.0},
            )
    finally:
        _stop(directory, proc)


def test_a_directory_longer_than_a_socket_path_still_works(tmp_path):
    """AF_UNIX paths stop at 107 bytes; deployment private dirs are often longer."""
    directory = warm.prepare_dir(tmp_path / ("x" * 60) / ("y" * 60) / warm.WORKER_DIR)
    assert len(str(directory / warm.SOCKET_NAME)) > warm.SUN_PATH_MAX
    proc = _start_worker(directory)
    try:
        assert warm.request(directory, "ping")["digest"] == warm.code_digest()
    finally:
        _stop(directory, proc)
    assert proc.returncode == 0 and not (directory / warm.SOCKET_NAME).exists()


def test_a_message_child_holds_neither_the_lock_nor_the_socket(tmp_path):
    """The child forked for a message closes its copies of the worker's lock and listening
    socket: a worker that exits mid-message frees its directory for the next one at once."""
    import fcntl
    import signal
    from types import SimpleNamespace

    from flwr.app import Context, Message, RecordDict

    from client_app import worker

    lock_path = tmp_path / "lock"
    lock = lock_path.open("a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "w.sock"))
    listening_inode = os.fstat(listening.fileno()).st_ino
    seen = tmp_path / "child-fds.txt"

    def query(msg, ctx):
        fds = Path("/proc/self/fd")
        links = []
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):  # the directory's own descriptor is gone
                links.append(os.readlink(fd))
        seen.write_text("\n".join(links))
        return Message(RecordDict(), reply_to=msg)

    with task_identity():
        msg = Message(RecordDict(), dst_node_id=1, message_type="query")
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    marks = {"at-process-start": 0.0, "at-imports-start": 0.0, "at-imports-done": 0.0}
    ours, theirs = socket.socketpair()
    warm.send_json(ours, {"op": "run", "handler": "query", "digest": "d", "marks": marks})
    warm.send_frame(ours, warm.message_bytes(msg))
    warm.send_frame(ours, warm.context_bytes(ctx))
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the child is reaped by the kernel
    try:
        assert worker._handle(theirs, listening, SimpleNamespace(query=query), "d", lock.fileno())
        theirs.close()
        assert warm.recv_json(ours) == {"ok": True}
    finally:
        signal.signal(signal.SIGCHLD, old)
        ours.close()
        listening.close()
    links = seen.read_text().splitlines()
    assert any(link.startswith("socket:") for link in links)  # its own connection is there
    assert str(lock_path) not in links
    assert f"socket:[{listening_inode}]" not in links
    # the parent still holds the lock: a second worker would be refused
    with open(lock_path, "a") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.close()
