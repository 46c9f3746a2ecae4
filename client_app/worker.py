"""``python -m client_app.worker``: a SuperNode's warm worker (client_app.warm says why).

    python -m client_app.worker serve --dir /data/private/.warm-worker [--idle-exit 900]
    python -m client_app.worker status --dir ...
    python -m client_app.worker stop --dir ...

``serve`` imports the ClientApp's handlers (torch, transformers) once, then listens on
``<dir>/worker.sock``. Each message is run by a child forked for it: the child starts from the
worker's state right after the imports, exactly like a fresh ClientApp process, so nothing of
one message (random state, a loaded model, a monkeypatch) reaches the next, and a child that
crashes takes only its own message with it (the ClientApp then runs it in-process). The parent
never runs torch itself, so forking it is safe. One worker per directory (a lock file); it exits
after ``--idle-exit`` seconds without a message, on ``stop``, on SIGTERM, or when a ClientApp
running other code reaches it (``stale``: the next message starts a fresh one).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from client_app import warm

HANDLERS = ("train", "evaluate", "query")


def _log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker[{os.getpid()}] {text}", flush=True)


def serve(directory: Path, idle_exit_s: float) -> int:
    directory = warm.prepare_dir(directory)
    lock = (directory / "lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log(f"another worker already serves {directory}")
        return 0
    import client_app.app as handlers  # the imports every fresh ClientApp process pays

    digest = warm.code_digest()
    path = directory / warm.SOCKET_NAME
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with warm.socket_address(directory) as address:
            server.bind(address)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.listen(16)
    server.settimeout(idle_exit_s if idle_exit_s > 0 else None)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (directory / "worker.pid").write_text(f"{os.getpid()}\n")
    _log(f"serving {path} (code {digest}, idle exit {idle_exit_s:g} s)")
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                _log(f"no message for {idle_exit_s:g} s: exiting")
                return 0
            with conn:
                if not _handle(conn, server, handlers, digest, lock.fileno()):
                    return 0
    finally:
        server.close()
        if path.exists() and (directory / "worker.pid").read_text().strip() == str(os.getpid()):
            path.unlink(missing_ok=True)
            (directory / "worker.pid").unlink(missing_ok=True)


def _handle(
    conn: socket.socket, server: socket.socket, handlers: object, digest: str, lock_fd: int
) -> bool:
    """Serve one connection; False when the worker should exit. The child forked for a message
    closes its copies of the listening socket and of the lock, so a worker that exits while a
    child still runs leaves the directory free for the next one at once."""
    try:
        if warm.peer_uid(conn) != os.getuid():
            _log("refused a connection from another user")
            return True
        conn.settimeout(30.0)  # a request arrives at once; a silent peer is dropped
        header = warm.recv_json(conn)
        op = header.get("op")
        if op == "ping":
            warm.send_json(conn, {"ok": True, "pid": os.getpid(), "digest": digest})
            return True
        if op == "stop":
            warm.send_json(conn, {"ok": True})
            _log("stop requested")
            return False
        if op != "run" or header.get("handler") not in HANDLERS:
            warm.send_json(conn, {"ok": False, "error": "ValueError", "message": "bad request"})
            return True
        if header.get("digest") != digest:
            warm.send_json(conn, {"stale": True})
            _log(f"a ClientApp of other code ({header.get('digest')}) reached it: exiting")
            return False
        message, context = warm.recv_frame(conn), warm.recv_frame(conn)
    except (OSError, EOFError, ValueError) as err:
        _log(f"dropped a bad request: {err}")
        return True
    pid = os.fork()
    if pid == 0:  # the child: one message, then exit without running the parent's cleanup
        code = 1
        try:
            server.close()
            os.close(lock_fd)  # the flock stays the parent's (it holds its own descriptor)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            conn.settimeout(None)
            _run(conn, header, message, context, handlers)
            code = 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return True


def _run(
    conn: socket.socket, header: dict, message: bytes, context: bytes, handlers: object
) -> None:
    from client_app import timeline

    try:
        msg = warm.message_from_bytes(message)
        ctx = warm.context_from_bytes(context)
        timeline.adopt(header["marks"])
        reply = getattr(handlers, header["handler"])(msg, ctx)
        payload = warm.message_bytes(reply)
    except Exception as err:  # noqa: BLE001 (the ClientApp re-raises it, as in-process)
        _log(f"{header['handler']} failed: {traceback.format_exc().strip()}")
        warm.send_json(conn, {"ok": False, "error": type(err).__name__, "message": str(err)})
        return
    warm.send_json(conn, {"ok": True})
    warm.send_frame(conn, payload)
    _log(f"{header['handler']} done")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client_app.worker", description=__doc__)
    parser.add_argument("command", choices=("serve", "status", "stop"))
    parser.add_argument(
        "--dir",
        required=True,
        help="the worker's directory: <private-dir>/.warm-worker of the SuperNode it serves",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=warm.IDLE_EXIT_S,
        help="seconds without a message after which the worker exits (0: never)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    directory = Path(args.dir).expanduser().absolute()
    if args.command == "serve":
        try:
            return serve(directory, args.idle_exit)
        except warm.WorkerError as err:
            print(f"python -m client_app.worker: {err}", file=sys.stderr)
            return 2
    answer = warm.request(directory, "ping" if args.command == "status" else "stop")
    if answer is None:
        print(f"no worker serves {directory}")
        return 1 if args.command == "status" else 0
    print(
        f"worker {answer.get('pid', '')} at {directory}: "
        + (f"serving code {answer.get('digest')}" if args.command == "status" else "stopping")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
