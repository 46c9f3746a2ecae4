"""A ClientApp refuses a ServerApp whose code differs (the digest in every message's config):
in simulation the clients import the directory the SuperLink started in, which was seen to be
another checkout."""

from __future__ import annotations

import pytest

from protocol.appcode import app_digest
from server_app.phases import RoundFailedError
from tests.reliability.helpers import run, setup_run


def test_digest_covers_the_shared_packages_and_is_stable():
    app_digest.cache_clear()
    first = app_digest()
    app_digest.cache_clear()
    assert app_digest() == first and len(first) == 16


def test_client_with_other_code_refuses_every_message(tmp_path, tiny_clip_dir, monkeypatch, caplog):
    cfg = setup_run(tmp_path, tiny_clip_dir, **{"server.num-rounds": 1, "server.min-replies": 1})
    monkeypatch.setattr("client_app.app.app_digest", lambda: "0" * 16)
    with pytest.raises(RoundFailedError, match="0 valid training replies"):
        run(cfg)
    assert "runs other code" in caplog.text and "flower-superlink" in caplog.text
