"""The node-local warm worker's wire protocol and its client (what a per-message ClientApp uses).

Flower's Deployment Engine starts a fresh ClientApp process for every message, and importing
torch + transformers costs that process seconds every round (docs/performance.md §4). A warm
worker (client_app.worker) is one long-lived process per SuperNode that has imported them once;
for each message it forks a child, which runs the very handler the ClientApp would have run
(client_app.app), in a fresh copy of the worker's state, so the results are bit-identical.

Everything here imports only the standard library and Flower: the per-message process that
finds a worker never imports torch. Security: the worker listens on ``worker.sock`` inside a
directory of the node's private-dir that must be the user's own and mode 0700; the socket is
0600, and each side checks the other's user id (SO_PEERCRED) before sending anything.

Frames: an 8-byte big-endian length, then the bytes. A request is a JSON header, the message and
the context (Flower's protobuf serialisation); a reply a JSON header and, when it is ``ok``, the
reply message. The worker may answer ``stale`` (it runs other code: it then exits).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

from protocol.appcode import packages_digest

WORKER_DIR = ".warm-worker"  # under the node's private-dir
SOCKET_NAME = "worker.sock"
CONNECT_TIMEOUT_S = 2.0
MAX_FRAME = 8 << 30  # a fedavg-full message of a large encoder fits
MAX_HEADER = 1 << 20
SUN_PATH_MAX = 107  # AF_UNIX path limit (108 bytes with the terminating NUL)
IDLE_EXIT_S = 900.0  # a worker started on first use exits after this long without messages
PACKAGES = ("client_app", "task", "protocol")


class WorkerError(RuntimeError):
    """The worker's directory or socket cannot be used safely (the message runs in-process)."""


# -- framing --------------------------------------------------------------------------------


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">Q", len(data)))
    sock.sendall(data)


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> bytes:
    """One frame; EOFError when the other side closed, ValueError when it is over ``limit``."""
    (n,) = struct.unpack(">Q", _recv_exact(sock, 8))
    if n > limit:
        raise ValueError(f"frame of {n} bytes is over the limit of {limit}")
    return _recv_exact(sock, n)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other side closed the connection")
        got += k
    return bytes(buf)


def send_json(sock: socket.socket, obj: dict[str, Any]) -> None:
    send_frame(sock, json.dumps(obj).encode())


def recv_json(sock: socket.socket) -> dict[str, Any]:
    obj = json.loads(recv_frame(sock, MAX_HEADER))
    if not isinstance(obj, dict):
        raise ValueError("a header frame must be a JSON object")
    return obj


def message_bytes(msg: Message) -> bytes:
    from flwr.common.serde import message_to_proto

    return message_to_proto(msg).SerializeToString()


def message_from_bytes(data: bytes) -> Message:
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    return message_from_proto(ProtoMessage.FromString(data))


def context_bytes(ctx: Context) -> bytes:
    from flwr.common.serde import context_to_proto

    return context_to_proto(ctx).SerializeToString()


def context_from_bytes(data: bytes) -> Context:
    from flwr.common.serde import context_from_proto
    from flwr.proto.message_pb2 import Context as ProtoContext

    return context_from_proto(ProtoContext.FromString(data))


# -- the directory, the code, the peer --------------------------------------------------------


def worker_dir(private_dir: str | Path) -> Path:
    return Path(private_dir).expanduser().absolute() / WORKER_DIR


def prepare_dir(directory: Path) -> Path:
    """Create ``directory`` (mode 0700) or check an existing one is ours and private; the
    socket path must fit AF_UNIX's limit."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise WorkerError(f"{directory} is not a directory")
    if st.st_uid != os.getuid():
        raise WorkerError(f"{directory} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        raise WorkerError(
            f"{directory} is readable or writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "Fix: chmod 700 it"
        )
    sock = directory / SOCKET_NAME
    if len(os.fsencode(sock)) > SUN_PATH_MAX and not Path("/proc/self/fd").is_dir():
        raise WorkerError(f"{sock} is longer than a Unix socket path may be ({SUN_PATH_MAX})")
    return directory


@contextlib.contextmanager
def socket_address(directory: Path) -> Iterator[str]:
    """An address for ``directory``'s socket that fits AF_UNIX's 107 bytes whatever the
    directory's length: on Linux ``/proc/self/fd/<fd of the directory>/worker.sock``."""
    full = str(directory / SOCKET_NAME)
    if len(os.fsencode(full)) <= SUN_PATH_MAX or not Path("/proc/self/fd").is_dir():
        yield full
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


def connect(directory: Path) -> socket.socket:
    """A connection to the worker of ``directory`` (OSError when none listens), after checking
    that the process behind it is this user's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        with socket_address(directory) as address:
            sock.connect(address)
        if peer_uid(sock) != os.getuid():
            raise WorkerError(f"{directory / SOCKET_NAME} is served by another user")
    except BaseException:
        sock.close()
        raise
    return sock


def code_root() -> Path:
    return Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_digest() -> str:
    """The digest of the .py files the handlers run (client_app, task, protocol): a worker that
    runs other code than the ClientApp that reaches it must not serve it."""
    return packages_digest(PACKAGES)


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# -- the client: forward one message ----------------------------------------------------------

BUILTIN_ERRORS: dict[str, type[Exception]] = {
    e.__name__: e
    for e in (ValueError, RuntimeError, KeyError, TypeError, FileNotFoundError, OSError)
}


class HandlerError(RuntimeError):
    """The handler raised in the worker; re-raised here as the same built-in type if it is one."""


def forward(
    directory: Path, handler: str, msg: Message, ctx: Context, marks: dict[str, float]
) -> Message | None:
    """Run ``handler`` for ``msg`` in the worker listening in ``directory``; None when there is
    no worker, it runs other code, or it died before replying (the caller then runs the message
    in-process: the private store's versions make a replay exact). A handler's exception is
    raised here, as in-process."""
    if not (directory / SOCKET_NAME).exists():
        return None
    try:
        sock = connect(directory)  # WorkerError (another user's socket) is raised
    except OSError:
        return None  # a stale socket file: no worker behind it
    try:
        sock.settimeout(None)  # a round takes what it takes; a dead worker closes the socket
        header = {"op": "run", "handler": handler, "digest": code_digest(), "marks": marks}
        try:
            send_json(sock, header)
            send_frame(sock, message_bytes(msg))
            send_frame(sock, context_bytes(ctx))
            answer = recv_json(sock)
            if answer.get("stale"):
                return None
            if not answer.get("ok"):
                kind = BUILTIN_ERRORS.get(str(answer.get("error")), HandlerError)
                raise kind(str(answer.get("message", "the warm worker's handler failed")))
            reply = message_from_bytes(recv_frame(sock))
        except (EOFError, ConnectionError, BrokenPipeError):
            return None  # the worker (or its child) died mid-message
    finally:
        sock.close()
    return Message(content=reply.content, reply_to=msg)


def request(directory: Path, op: str) -> dict[str, Any] | None:
    """A control request (``ping`` or ``stop``) to the worker; None when none answers."""
    try:
        sock = connect(directory)
    except OSError:  # WorkerError included: another user's socket is no worker of ours
        return None
    try:
        send_json(sock, {"op": op})
        return recv_json(sock)
    except (OSError, EOFError, ValueError):
        return None
    finally:
        sock.close()


def spawn(directory: Path, idle_exit_s: float = IDLE_EXIT_S) -> subprocess.Popen:
    """Start a worker for ``directory`` in the background (its own session, so it outlives
    this per-message process; it exits after ``idle_exit_s`` without messages). A second
    worker for the same directory exits at once (the first holds its lock)."""
    prepare_dir(directory)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(code_root()), *filter(None, [env.get("PYTHONPATH", "")])]
    )
    log = open(directory / "worker.log", "ab")  # noqa: SIM115 (the child keeps it)
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client_app.worker",
                "serve",
                "--dir",
                str(directory),
                "--idle-exit",
                str(idle_exit_s),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(code_root()),
            start_new_session=True,
        )
    finally:
        log.close()
