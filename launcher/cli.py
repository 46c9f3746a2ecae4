"""Hydra launcher: compose a preset from conf/ with overrides into one `flwr run` call.

Flower starts the ServerApp and ClientApps itself, so Hydra does not wrap the apps; it only
composes configs and sweeps. Each (multirun) job flattens ``run_config`` to Flower's
``section.key`` form, writes it as a TOML file next to Hydra's outputs and runs::

    flwr run <app> [<connection>] --stream --run-config <file> \\
        --federation-config "num-supernodes=<data.num-clients>"

The launcher fixes ``run.name`` (the name the app itself would derive, see
``task.config.default_run_name``), so it knows the run directory before starting. A sweep runs
its jobs one after another and, per job:

* **skip**: ``runs/<name>/summary.json`` exists and its ``final_round`` reaches
  ``server.num-rounds`` (``launch.skip_complete=false`` reruns; the app then resumes, a no-op);
* **resume**: the directory exists but the run is unfinished (interrupted, or more rounds were
  asked for): the same ``flwr run`` call, and the ServerApp continues after the last completed
  round (same ``run.name``, ``run.resume=true``);
* **new**: otherwise.

Before starting a job the launcher runs the preflight (task.runs.preflight: data root,
folder-to-class mapping, images per class, federation, model directory) and a failure ends
the job in seconds with the key to fix; nothing is started. ``flwr run --stream`` exits 0 even
when the run failed, so the launcher also reads the run's final status from the SuperLink
(``flwr ls``) and, in simulation, checks the run directory reached ``server.num-rounds``.

Each job writes ``launch.json`` (name, action, command, preflight, status, error) next to its
TOML. At the end the launcher prints one line per job (method and swept values, complete /
resumed / skipped / failed / not run, run directory, first line of the error) and exits with the
first failed job's exit code (2: preflight; else flwr's, or 1), or 0 when none failed. Without
``launch.continue_on_error`` the jobs after a failure are not run.

Modules: ``launch_compose`` (the config and the `flwr run` argv of a job, the run directory's
state), ``launch_flwr`` (running `flwr run` and reading how the run ended), ``launch_summary``
(the sweep's summary lines); this one plans, preflights and runs each job.

Examples::

    python -m launcher federation=ucmerced_20 method=promptfl rounds=5
    python -m launcher -m federation=ucmerced_10,ucmerced_40 \\
        method=promptfl,fedrsclip split=even,dirichlet0.1 seed=0,1,2
    python -m launcher launch.dry_run=true      # print the command (and action) only
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from launcher.compose import (
    PATH_KEYS,
    app_defaults,
    build_command,
    composed_flat,
    flatten,
    plan,
    resolve_paths,
    run_state,
    to_toml,
)
from launcher.flwr_cli import FlwrResult, error_line
from launcher.flwr_cli import run_flwr as _run_flwr  # module attributes: tests patch them
from launcher.flwr_cli import run_status as _run_status
from launcher.summary import STATUSES, JobOutcome, summary_lines
from task.config import ConfigError, parse_app_config
from task.runs.preflight import Check, PreflightReport, check_data, check_model

__all__ = [
    "CONF_DIR",
    "PATH_KEYS",
    "PREFLIGHT_FAILED",
    "SESSION",
    "STATUSES",
    "FlwrResult",
    "JobOutcome",
    "Session",
    "app_defaults",
    "build_command",
    "cli",
    "composed_flat",
    "finish",
    "flatten",
    "launch_job",
    "main",
    "plan",
    "preflight",
    "resolve_paths",
    "run_state",
    "summary_lines",
    "to_toml",
]

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


# -- one job ----------------------------------------------------------------------------------
@dataclass
class Session:
    """Every job of one launcher invocation (a multirun calls main once per job)."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    stopped: bool = False  # a job failed and launch.continue_on_error is false
    preflight_cache: dict[str, list[Check]] = field(default_factory=dict)
    printed: set[str] = field(default_factory=set)  # preflight reports already shown


SESSION = Session()
PREFLIGHT_FAILED = 2  # exit code of a job stopped by the preflight (flwr's own codes pass through)


def _preflight_enabled(cfg: DictConfig) -> bool:
    """auto: before local simulations only (with a connection the paths are the SuperLink's)."""
    mode = str(cfg.launch.get("preflight", "auto")).lower()
    return mode == "true" or (mode == "auto" and not cfg.launch.connection)


def preflight(flat: Mapping[str, Any], base: Path, session: Session) -> PreflightReport:
    """task.runs.preflight on the composed config; data and model results are reused across jobs."""
    merged = {**app_defaults(base), **flat}
    app = parse_app_config(merged)
    data_key = "data:" + json.dumps(dataclasses.asdict(app.core.data), sort_keys=True)
    model_key = "model:" + app.core.model.name
    cached = session.preflight_cache
    if data_key not in cached:
        cached[data_key] = check_data(app.core.data)
    checks = list(cached[data_key])
    if all(c.ok for c in checks):
        if model_key not in cached:
            cached[model_key] = [check_model(app.core.model.name, quick=True)]
        checks += cached[model_key]
    return PreflightReport(checks)


def launch_job(
    cfg: DictConfig,
    out_dir: Path,
    base: Path,
    overrides: list[str] | None = None,
    session: Session | None = None,
) -> JobOutcome:
    """Plan one job (skip / resume / new), preflight it, run it unless skipped or dry; record
    the outcome in the session (for the summary) and in ``launch.json``."""
    session = session if session is not None else SESSION
    index = len(session.outcomes)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = JobOutcome(index, "?", "", "?", "failed", overrides=list(overrides or []))
    record: dict[str, Any] = {}
    try:
        _run_job(cfg, out_dir, base, session, outcome, record)
    except (ConfigError, ValueError, OSError) as err:  # bad config, no `flwr` on PATH, ...
        if session.stopped:  # not run anyway: an earlier job failed
            outcome.status = "not run"
        else:
            outcome.status = "failed"
            outcome.returncode = PREFLIGHT_FAILED if isinstance(err, ValueError) else 1
            outcome.error = str(err).splitlines()[0]
        print(f"[launch] job #{index}: {err}", flush=True)
    record.update(status=outcome.status, error=outcome.error, overrides=outcome.overrides)
    if outcome.returncode:
        record["returncode"] = outcome.returncode
    (out_dir / "launch.json").write_text(json.dumps(record, indent=1))
    if outcome.failed:
        print(f"[launch] {outcome.run} failed (exit code {outcome.returncode})", flush=True)
        if not cfg.launch.continue_on_error:
            session.stopped = True
    session.outcomes.append(outcome)
    return outcome


def _run_job(
    cfg: DictConfig,
    out_dir: Path,
    base: Path,
    session: Session,
    outcome: JobOutcome,
    record: dict[str, Any],
) -> None:
    flat = composed_flat(cfg, base)
    cmd = build_command(cfg, out_dir, base, flat)
    action, root, done, rounds = plan(cfg, flat, base)
    outcome.run, outcome.run_dir = root.name, str(root)
    outcome.method = str(flat.get("method.name") or app_defaults(base).get("method.name", "?"))
    record.update(
        run=root.name,
        run_dir=str(root),
        action=action,
        rounds_done=done,
        rounds=rounds,
        command=cmd,
    )
    if session.stopped:
        outcome.status = "not run"
        print(
            f"[launch] not run: {root.name} (an earlier job failed; "
            "launch.continue_on_error=true runs the rest)",
            flush=True,
        )
        return
    print(f"[launch] {action} {root.name} ({done}/{rounds} rounds done)", flush=True)
    print(shlex.join(cmd), flush=True)
    if action == "complete":
        outcome.status = "skipped"
        return
    if _preflight_enabled(cfg):
        report = preflight(flat, (base / cfg.launch.app).resolve(), session)
        text = report.format()
        if text in session.printed:  # the same data and model as an earlier job
            text = "preflight: as for an earlier job" + (
                "" if report.ok else f" (fix {report.failure.key})"
            )
        else:
            session.printed.add(text)
        print(text, flush=True)
        record["preflight"] = [
            {"check": c.name, "ok": c.ok, "key": c.key, "detail": c.detail} for c in report.checks
        ]
        failure = report.failure
        if failure is not None:
            outcome.returncode = PREFLIGHT_FAILED
            outcome.error = f"preflight {failure.name} ({failure.key}): {failure.detail}"
            outcome.error = outcome.error.splitlines()[0]
            print(f"[launch] preflight failed: fix {failure.key}; nothing was started", flush=True)
            return
    if cfg.launch.dry_run:
        outcome.status = "dry-run"
        return
    env = dict(os.environ)
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    # Ray's notice about a future default, printed by every actor: nothing a user can act on
    # (it reaches the actors when this call starts the local SuperLink).
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    result = _run_flwr(cmd, env)
    record.update(flwr_returncode=result.returncode, flwr_run_id=result.run_id)
    _judge(cfg, outcome, result, env, root, rounds, action, record)


def _judge(
    cfg: DictConfig,
    outcome: JobOutcome,
    result: FlwrResult,
    env: dict[str, str],
    root: Path,
    rounds: int,
    action: str,
    record: dict[str, Any],
) -> None:
    """Set the outcome from flwr's exit code, the run's status on the SuperLink (`flwr run`
    exits 0 when the run itself failed) and, in simulation, the run directory."""
    if result.returncode != 0:
        outcome.returncode = result.returncode
        outcome.error = error_line("", result) or f"flwr run exited with {result.returncode}"
        return
    if not cfg.launch.stream:  # flwr run returned once the run was submitted
        outcome.status = "submitted"
        return
    status = _run_status(cfg, result.run_id, env) if result.run_id else None
    record["flwr_status"] = list(status) if status else None
    if status and status[0].rsplit(":", 1)[-1] in ("failed", "stopped"):
        outcome.returncode = 1
        outcome.error = error_line(status[1], result) or f"run {status[0]}"
        return
    if not cfg.launch.connection:  # a local simulation writes the run directory here
        state, done = run_state(root, rounds)
        if state != "complete":
            outcome.returncode = 1
            outcome.error = error_line("", result) if result.exceptions else ""
            outcome.error = outcome.error or (
                f"the run stopped after {done}/{rounds} rounds (no complete summary.json in {root})"
            )
            return
    elif status is None:
        outcome.returncode = 1
        outcome.error = "could not read the run's final status from the SuperLink (flwr ls)"
        return
    outcome.status = "resumed" if action == "resume" else "complete"


# -- the sweep's end ----------------------------------------------------------------------------
def finish(session: Session | None = None) -> int:
    """Print the summary; the exit code is the first failed job's (0 when none failed)."""
    session = session if session is not None else SESSION
    if not session.outcomes:
        return 0
    print("\n".join(summary_lines(session.outcomes)), flush=True)
    failed = [o for o in session.outcomes if o.failed]
    if not failed:
        return 0
    print(f"[launch] {len(failed)} of {len(session.outcomes)} job(s) failed", flush=True)
    return failed[0].returncode or 1


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compose, then run (or print) one `flwr run` call per Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    launch_job(cfg, out_dir, Path(hydra.utils.get_original_cwd()), list(hc.overrides.task))


def cli() -> None:
    """Entry point: every job, then the summary; exits non-zero when any job failed."""
    main()
    sys.exit(finish())


if __name__ == "__main__":
    cli()
