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

Before starting a job the launcher runs the preflight (task.preflight: data root, folder-to-class
mapping, images per class, federation, model directory) and a failure ends the job in seconds
with the key to fix; nothing is started. ``flwr run --stream`` exits 0 even when the run failed,
so the launcher also reads the run's final status from the SuperLink (``flwr ls``) and, in
simulation, checks the run directory reached ``server.num-rounds``.

Each job writes ``launch.json`` (name, action, command, preflight, status, error) next to its
TOML. At the end the launcher prints one line per job (method and swept values, complete /
resumed / skipped / failed / not run, run directory, first line of the error) and exits with the
first failed job's exit code (2: preflight; else flwr's, or 1), or 0 when none failed. Without
``launch.continue_on_error`` the jobs after a failure are not run.

Examples::

    python -m server_app.launch federation=ucmerced_20 method=promptfl rounds=5
    python -m server_app.launch -m federation=ucmerced_10,ucmerced_40 \\
        method=promptfl,fedrsclip split=even,dirichlet0.1 seed=0,1,2
    python -m server_app.launch launch.dry_run=true      # print the command (and action) only
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from task.config import (
    PATH_KEYS,
    ConfigError,
    default_run_name,
    legacy_run_name,
    parse_app_config,
)
from task.preflight import Check, PreflightReport, check_data, check_model

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data": {"root": x}} -> {"data.root": x} (Flower's run-config keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resolve_paths(flat: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative local paths (and model dirs that exist locally) -> absolute paths."""
    out = dict(flat)

    def absolute(value: str) -> str:
        return value if not value or Path(value).is_absolute() else str((base / value).resolve())

    for key in PATH_KEYS:
        if isinstance(out.get(key), str):
            out[key] = absolute(out[key])
    model = out.get("model.name")
    if isinstance(model, str) and (base / model).is_dir():
        out["model.name"] = str((base / model).resolve())
    roots = out.get("data.cross-roots")
    if isinstance(roots, str) and roots:
        pairs = [p.split("=", 1) for p in roots.split(",") if p.strip()]
        out["data.cross-roots"] = ",".join(f"{k.strip()}={absolute(v.strip())}" for k, v in pairs)
    return out


def to_toml(flat: Mapping[str, Any]) -> str:
    """A run-config override file (quoted dotted keys; scalars only, as Flower requires)."""
    lines = []
    for key, value in sorted(flat.items()):
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            raise ValueError(f"run_config.{key}: Flower run config takes scalars, got {value!r}")
        lines.append(f"{json.dumps(key)} = {text}")
    return "\n".join(lines) + "\n"


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """The app's run-config defaults ([tool.flwr.app.config] of its pyproject.toml)."""
    path = app_dir / "pyproject.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    return dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def composed_flat(cfg: DictConfig, base: Path) -> dict[str, Any]:
    """run_config flattened, paths made absolute, and ``run.name`` fixed (derived if empty)."""
    flat = flatten(OmegaConf.to_container(cfg.run_config, resolve=True))
    if cfg.launch.resolve_paths:
        flat = resolve_paths(flat, base)
    if not flat.get("run.name"):
        merged = {**app_defaults((base / cfg.launch.app).resolve()), **flat}
        try:
            parsed = parse_app_config(merged)
        except ConfigError:  # pyproject.toml and task/config.py out of step: let the app say so
            parsed = parse_app_config(flat)
        flat["run.name"] = default_run_name(parsed)
        runs_dir = Path(str(merged.get("run.dir") or "runs"))
        runs_dir = runs_dir if runs_dir.is_absolute() else base / runs_dir
        legacy = legacy_run_name(parsed)
        if not (runs_dir / flat["run.name"]).exists() and (runs_dir / legacy).exists():
            flat["run.name"] = legacy  # started before cache locations left the name
    return flat


def run_state(run_root: Path, num_rounds: int) -> tuple[str, int]:
    """("complete" | "resume" | "new", last round recorded) for the run directory ``run_root``.

    Complete: summary.json exists and its final_round reaches ``num_rounds``. Resume: the
    directory holds a started run (state.json or metrics) that is not complete. New: otherwise.
    """
    summary = run_root / "summary.json"
    done = 0
    if summary.is_file():
        try:
            done = int(json.loads(summary.read_text()).get("final_round") or 0)
        except (ValueError, json.JSONDecodeError):
            done = 0
        if done >= num_rounds:
            return "complete", done
    metrics = run_root / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                done = max(done, int(json.loads(line)["round"]))
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                break
    if done or (run_root / "state.json").is_file():
        return "resume", done
    return "new", 0


def plan(cfg: DictConfig, flat: Mapping[str, Any], base: Path) -> tuple[str, Path, int, int]:
    """(action, run directory, rounds done, rounds asked) for one composed job."""
    defaults = app_defaults((base / cfg.launch.app).resolve())
    run_dir = Path(str(flat.get("run.dir", defaults.get("run.dir", "runs"))))
    if not run_dir.is_absolute():
        run_dir = base / run_dir
    rounds = int(flat.get("server.num-rounds", defaults.get("server.num-rounds", 1)))
    root = run_dir / str(flat["run.name"])
    action, done = run_state(root, rounds)
    if action == "complete" and not cfg.launch.skip_complete:
        action = "resume"
    return action, root, done, rounds


def build_command(
    cfg: DictConfig, out_dir: Path, base: Path, flat: Mapping[str, Any] | None = None
) -> list[str]:
    """The `flwr run` argv for one composed config; writes the run-config TOML to out_dir."""
    if flat is None:
        flat = composed_flat(cfg, base)
    out_dir.mkdir(parents=True, exist_ok=True)
    toml_path = out_dir / "run_config.toml"
    toml_path.write_text(to_toml(flat))
    cmd = ["flwr", "run", str((base / cfg.launch.app).resolve())]
    if cfg.launch.connection:
        cmd.append(str(cfg.launch.connection))
    if cfg.launch.stream:
        cmd.append("--stream")
    cmd += ["--run-config", str(toml_path)]
    if not cfg.launch.connection:  # simulation: the federation size follows the data split
        # One CPU per virtual client: Flower's default (2) runs one Ray actor on a 2-core machine;
        # two 1-thread actors finish a stand-in round ~1.4x sooner (docs/performance.md).
        fed = f"num-supernodes={int(cfg.launch.num_supernodes)}"
        cpus = cfg.launch.get("client_cpus")
        if cpus:
            fed += f" client-resources-num-cpus={float(cpus):g}"
        cmd += ["--federation-config", fed]
    return cmd


# -- one job ----------------------------------------------------------------------------------
@dataclass
class JobOutcome:
    """What became of one job: the line it gets in the sweep summary, and its exit code."""

    index: int
    run: str
    run_dir: str
    method: str
    status: str  # complete | resumed | skipped | failed | not run | dry-run | submitted
    returncode: int = 0
    error: str = ""  # first line of the error (failed jobs)
    overrides: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class Session:
    """Every job of one launcher invocation (a multirun calls main once per job)."""

    outcomes: list[JobOutcome] = field(default_factory=list)
    stopped: bool = False  # a job failed and launch.continue_on_error is false
    preflight_cache: dict[str, list[Check]] = field(default_factory=dict)
    printed: set[str] = field(default_factory=set)  # preflight reports already shown


SESSION = Session()
PREFLIGHT_FAILED = 2  # exit code of a job stopped by the preflight (flwr's own codes pass through)


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


def _run_flwr(cmd: list[str], env: dict[str, str]) -> FlwrResult:
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


def _run_status(cfg: DictConfig, run_id: str, env: dict[str, str]) -> tuple[str, str] | None:
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


def _error_line(details: str, result: FlwrResult) -> str:
    """The first line of the run's error: Flower's status details, with the exception's type
    when the log shows it."""
    message = details.removeprefix("Simulation failed with exception:").strip()
    message = message.splitlines()[0] if message else ""
    for line in result.exceptions:
        kind = _EXCEPTION.match(line)
        if kind and (not message or message[:60] in line):
            return f"{kind.group(1)}: {line[kind.end() :]}"
    return message or result.last_line


def _preflight_enabled(cfg: DictConfig) -> bool:
    """auto: before local simulations only (with a connection the paths are the SuperLink's)."""
    mode = str(cfg.launch.get("preflight", "auto")).lower()
    return mode == "true" or (mode == "auto" and not cfg.launch.connection)


def preflight(flat: Mapping[str, Any], base: Path, session: Session) -> PreflightReport:
    """task.preflight on the composed config; data and model results are reused across jobs."""
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
        outcome.error = _error_line("", result) or f"flwr run exited with {result.returncode}"
        return
    if not cfg.launch.stream:  # flwr run returned once the run was submitted
        outcome.status = "submitted"
        return
    status = _run_status(cfg, result.run_id, env) if result.run_id else None
    record["flwr_status"] = list(status) if status else None
    if status and status[0].rsplit(":", 1)[-1] in ("failed", "stopped"):
        outcome.returncode = 1
        outcome.error = _error_line(status[1], result) or f"run {status[0]}"
        return
    if not cfg.launch.connection:  # a local simulation writes the run directory here
        state, done = run_state(root, rounds)
        if state != "complete":
            outcome.returncode = 1
            outcome.error = _error_line("", result) if result.exceptions else ""
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
def _swept(outcomes: list[JobOutcome]) -> list[str]:
    """Override keys whose values differ between jobs (what the sweep varies)."""
    values: dict[str, set[str]] = {}
    for o in outcomes:
        for item in o.overrides:
            key, _, value = item.lstrip("+~").partition("=")
            values.setdefault(key, set()).add(value)
    keys = [k for k, v in values.items() if len(v) > 1]
    return [k for k in keys if k not in ("method", "run_config.method.name")]


def summary_lines(outcomes: list[JobOutcome], cwd: Path | None = None) -> list[str]:
    """One line per job: number, method and swept values, status, run directory, error (its
    first sentence before "Fix:"; the whole message is in the job's log and launch.json)."""
    cwd = cwd or Path.cwd()
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in STATUSES[:4])
    keys = _swept(outcomes)
    rows = []
    for o in outcomes:
        given = dict(item.lstrip("+~").partition("=")[::2] for item in o.overrides)
        what = " ".join([f"method={o.method}", *(f"{k}={given[k]}" for k in keys if k in given)])
        where = o.run_dir or "-"
        with contextlib.suppress(ValueError):
            where = str(Path(where).relative_to(cwd))
        error = o.error.split(" Fix:")[0].rstrip(".")
        rows.append((f"#{o.index}", what, o.status, where, error[:240]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"[launch] summary of {len(outcomes)} job(s): {tally}"]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:4], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, row[4]]).rstrip())
    return lines


STATUSES = ("complete", "resumed", "skipped", "failed", "not run", "dry-run", "submitted")


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
