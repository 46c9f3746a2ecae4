"""Our own send-and-wait: polls fast while replies come, backs off when none do, gives up at the
timeout with what came (the same semantics as Grid.send_and_receive, without its fixed 3 s)."""

from __future__ import annotations

from types import SimpleNamespace

import server_app.transport as transport


class FakeGrid:
    """Replies become available at given pull counts."""

    def __init__(self, ready_at: dict[str, int]) -> None:
        self.ready_at, self.pulls = ready_at, 0

    def push_messages(self, messages):
        return list(self.ready_at)

    def pull_messages(self, ids):
        self.pulls += 1
        due = [i for i in ids if self.ready_at[i] <= self.pulls]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in due]


def test_polls_until_every_reply_came_backing_off_when_none_do(monkeypatch):
    sleeps = []
    monkeypatch.setattr(transport.time, "sleep", sleeps.append)
    grid = FakeGrid({"a": 1, "b": 6})
    replies = transport.send_and_receive(grid, ["m1", "m2"], timeout=None)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert grid.pulls == 6
    assert sleeps[0] == transport.FIRST_POLL_S  # a reply came: poll again soon
    assert sleeps[1:] == sorted(sleeps[1:]) and max(sleeps) <= transport.MAX_POLL_S
    assert sum(sleeps) < 3.0  # Flower's deployment Grid sleeps 3 s after every pull


def test_timeout_returns_what_came(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(transport.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    grid = FakeGrid({"a": 1, "never": 10**9})
    replies = transport.send_and_receive(grid, ["m1", "m2"], timeout=5.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 5.0 <= clock[0] <= 5.0 + 1e-9  # the last sleep is cut to the deadline


def test_a_grid_without_push_and_pull_is_asked_directly():
    class Direct:
        def push_messages(self, messages):
            raise NotImplementedError

        def send_and_receive(self, messages, *, timeout=None):
            return [("reply", m, timeout) for m in messages]

    assert transport.send_and_receive(Direct(), ["x"], 7.0) == [("reply", "x", 7.0)]


def test_on_reply_hears_each_pull_that_brought_replies(monkeypatch):
    monkeypatch.setattr(transport.time, "sleep", lambda s: None)
    heard = []
    grid = FakeGrid({"a": 1, "b": 1, "c": 4})
    transport.send_and_receive(grid, ["m1", "m2", "m3"], None, lambda n, of: heard.append((n, of)))
    assert heard == [(2, 3), (3, 3)]  # pulls 2 and 3 brought nothing: not reported
