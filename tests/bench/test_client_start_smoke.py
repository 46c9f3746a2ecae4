"""Smoke test of the ClientApp start-up benchmark on the tiny random CLIP (no timings asserted;
no ../shared needed; no before-ref worktree)."""

import json

import pytest

from bench.client_start import main, markdown
from bench.render import render


@pytest.mark.slow  # three fresh Python processes importing torch and transformers
def test_client_start_tiny(tmp_path):
    out = tmp_path / "client_start.json"
    doc = main(["--models", "tiny", "--repeats", "1", "--warmups", "0", "--no-before",
                "--out", str(out), "--cache", str(tmp_path / "cache")])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(doc))
    assert saved["command"].startswith("python -m bench.client_start")
    for key in ("date", "commit", "machine", "repeats", "rows", "imports"):
        assert key in saved, key
    assert saved["machine"]["load_average_1_5_15_before"]
    (row,) = saved["rows"]
    assert row["model"] == "tiny" and row["imports_s"] > 0
    for mode in ("lean", "eager"):
        assert row[mode]["load_s"] > 0 and row[mode]["rss_mb"] > 0
        assert row[mode]["timm"] is False  # a CLIPModel never needs timm
    assert row["lean"]["vision_built"] is False and row["eager"]["vision_built"] is True
    assert "before" not in saved["imports"]
    top = saved["imports"]["importtime_top"]
    assert len(top) == 10 and top[0]["module"] == "client_app.app"
    table = markdown(saved)
    assert "| tiny |" in table and "eager / lean" in table
    text = "<!-- bench:client_start -->\nold\n<!-- /bench:client_start -->\n"
    new, done = render(text, tmp_path)
    assert done == ["client_start"] and "| tiny |" in new and "\nold\n" not in new
