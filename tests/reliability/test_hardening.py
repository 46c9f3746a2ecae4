"""Deployment and file hardening (issue 25): a checkpoint pickle cannot run code in the converter,
key files are never world-readable, certificates last as documented, the compose SuperLink
listens on loopback unless exposed on purpose."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import yaml

from tests.deploy import REPO, load_script


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_converter_refuses_a_pickle_with_a_payload(tmp_path: Path, monkeypatch) -> None:
    from task.model.families.convert_openclip import load_openclip
    from task.model.families.optional_imports import import_optional

    try:
        import_optional("open_clip", "the converter test")
    except ImportError as err:
        pytest.skip(f"open_clip is not installed: {err}")

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        load_openclip("ViT-B-32", bad)
    assert not (tmp_path / "PWNED").exists()


def test_keys_are_created_private_and_certificates_last_a_year(tmp_path: Path) -> None:
    certs = load_script("deploy_certs")
    old = os.umask(0)  # a permissive umask must not make a key world-readable
    try:
        paths = certs.make_certs(tmp_path / "certs")
        key, pub = certs.make_node_key(tmp_path / "keys" / "node")
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths["ca_key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(paths["key"].stat().st_mode) == 0o640
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 364 <= days <= 366


def test_compose_superlink_listens_on_loopback_by_default() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yml").read_text())
    (port,) = compose["services"]["superlink"]["ports"]
    assert port.startswith("${SUPERLINK_BIND:-127.0.0.1}:")
