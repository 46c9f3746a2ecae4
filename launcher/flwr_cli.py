"""Running `flwr run` for the launcher and reading how the run ended: its exit code, the run id
and exception lines it printed, and the run's final status on the SuperLink (`flwr ls`), since
`flwr run --stream` exits 0 even when the run itself failed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass

from omegaconf import DictConfig


@dataclass
class FlwrResult:
    """What `flwr run` left behind: its exit code, the run id it printed, exception lines."""

    returncode: int
    run_id: str | None
    exceptions: list[str]
    last_line: str


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit|Interrupt)): ")


def run_flwr(cmd: list[str], env: dict[str, str]) -> FlwrResult:
    """Run `flwr run`, passing its output through and keeping what tells how the run ended."""
    run_id, exceptions, last = None, [], ""
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            plain = _ANSI.sub("", line).strip()
            last = plain or last
            found = _RUN_ID.search(plain)
            run_id = run_id or (found.group(1) if found else None)
            if _EXCEPTION.match(plain):
                exceptions = [*exceptions[-49:], plain]
    return FlwrResult(proc.returncode, run_id, exceptions, last)


def run_status(cfg: DictConfig, run_id: str, env: dict[str, str]) -> tuple[str, str] | None:
    """(status, details) of a run from its SuperLink (`flwr ls`), e.g. ("finished:failed",
    "Simulation failed with exception: ..."); None when it cannot be read."""
    cmd = ["flwr", "ls", *([str(cfg.launch.connection)] if cfg.launch.connection else [])]
    cmd += ["--run-id", run_id, "--format", "json"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        text = proc.stdout
        runs = json.loads(text[text.index("{") :]).get("runs") or []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    run = next((r for r in runs if str(r.get("run-id")) == run_id), None)
    return (str(run.get("status", "")), str(run.get("status-details", ""))) if run else None


def error_line(details: str, result: FlwrResult) -> str:
    """The first line of the run's error: Flower's status details, with the exception's type
    when the log shows it."""
    message = details.removeprefix("Simulation failed with exception:").strip()
    message = message.splitlines()[0] if message else ""
    for line in result.exceptions:
        kind = _EXCEPTION.match(line)
        if kind and (not message or message[:60] in line):
            return f"{kind.group(1)}: {line[kind.end() :]}"
    return message or result.last_line
