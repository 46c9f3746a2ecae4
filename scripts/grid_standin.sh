#!/usr/bin/env bash
# The Fed-UCMerced comparison on the stand-in rs-lit-b0-minilm (VisionTextDualEncoder: frozen
# ImageNet EfficientNet-Lite0 + frozen MiniLM-L6 BERT, projections aligned on AID and part of
# NWPU-RESISC45; ../shared/models/rs-lit-b0-minilm/MODEL_CARD.md). Every job is one `flwr run`
# simulation through the Hydra launcher; rerunning a stage skips complete runs and resumes
# interrupted ones, and the launcher exits non-zero (stopping this script) when a job failed.
#
# Protocol: each client holds out 20% of its training images as validation
# (data.val-fraction=0.2). Tuning stages score on validation (data.holdout=val; test images are
# never loaded) -> $TUNING_RUNS; test stages use the same train' images and score on the test
# split with the settings tuning chose -> $RUNS. Nothing is tuned on a test split.
#
#   bash scripts/grid_standin.sh tune-recipe     # lr x epochs for promptfl and fedrsclip
#   bash scripts/grid_standin.sh tune-seeds      # the chosen recipe, seeds 1 and 2 (the spread)
#   bash scripts/grid_standin.sh tune-fedrsclip  # alpha (DPA), beta (OT), gamma, head
#   bash scripts/grid_standin.sh tune-baselines  # fedprox mu, fedpgp rank/weight, fedotp, local lr
#   bash scripts/grid_standin.sh tune-skew       # fedrsclip alpha under Dirichlet(0.1), local ref.
#   bash scripts/grid_standin.sh tune-head       # fedrsclip's personalised head (private, concat,
#                                                #   mix, auto) x alpha/beta, promptfolio's theta,
#                                                #   both splits, with the references
#   bash scripts/grid_standin.sh tune-head-entropy  # the entropy head (linear, ramp), 3 regimes
#   bash scripts/grid_standin.sh tune-new-baselines # promptfolio theta, pfedmoap lambda
#   bash scripts/grid_standin.sh test            # 10 clients x {even, Dir(0.1), Dir(0.5)} x 3 seeds,
#                                                #   all methods + ablations (priority 1)
#   bash scripts/grid_standin.sh partitions      # data.seed=1 of the 10-client even/Dir(0.1) cells
#   bash scripts/grid_standin.sh test2040        # 20 and 40 clients, main methods, 3 seeds
#                                                #   (SEEDS=0 FEDS=ucmerced_20: one seed at 20)
#   bash scripts/grid_standin.sh central         # centralised rows (one client, all data)
#   bash scripts/grid_standin.sh fullft          # fedavg-full at 10 clients (communication base)
#   bash scripts/grid_standin.sh cross           # UC Merced + AID clients (report the UCM ones;
#                                                #   CROSS_METHODS=... to widen it)
#   ROUNDS=20 bash scripts/grid_standin.sh extend federation=... split=... method=...
#                                                # resume those test runs to 20 rounds (the rows
#                                                #   the report lists as still rising)
#   bash scripts/grid_standin.sh report          # docs/results.md and docs/results/tuning-runs.md
#                                                #   (from the archived run records + $RUNS), and
#                                                #   docs/results/rounds20.md once runs reached 20
#
# GRID_OVERRIDES: extra Hydra overrides (e.g. shared absolute cache dirs when run from another
# worktree); RUNS / TUNING_RUNS: where the run directories go.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ROUNDS=${ROUNDS:-10}
RUNS=${RUNS:-$PWD/runs-standin}
TUNING_RUNS=${TUNING_RUNS:-$PWD/runs-standin-tuning}
VAL="++run_config.data.val-fraction=0.2"
# shellcheck disable=SC2206
COMMON=(recipe=standin "rounds=$ROUNDS" launch.continue_on_error=true ${GRID_OVERRIDES:-})
MAIN=zeroshot,local,promptfl,fedprox,fedotp,fedpgp,promptfolio,pfedmoap,fedrsclip
# The cross-dataset federation's methods: its five AID clients hold 2,000 images each, so a run
# costs ~8x a 10-client UC Merced one; the references (zero-shot, local, the shared-only
# promptfl), the two strongest personalised baselines of the 10-client grid, FedRSCLIP and its
# private-prompt head (-separate: what the entropy head's mix with the shared prompt costs the
# UC Merced clients, whose labels look half the federation's but whose images do not).
CROSS_METHODS=${CROSS_METHODS:-zeroshot,local,promptfl,promptfolio,pfedmoap,fedrsclip,fedrsclip-separate}
ABLATIONS=fedrsclip-noprivate,fedrsclip-nodpa,fedrsclip-noot,fedrsclip-separate,fedrsclip-concat
# Settings tuning chose beyond recipe=standin (docs/results/tuning.md); empty = the defaults.
TUNED=${TUNED:-}

tune() {  # a validation sweep: tune <split> <overrides...>
  local split=$1
  shift
  python -m launcher -m federation=ucmerced_10 "split=$split" "${COMMON[@]}" "$VAL" \
    ++run_config.data.holdout=val "run_config.run.dir=$TUNING_RUNS" "$@"
}
test_grid() {  # a test sweep: test_grid <overrides...>
  # shellcheck disable=SC2086
  python -m launcher -m "${COMMON[@]}" "$VAL" "run_config.run.dir=$RUNS" $TUNED "$@"
}
# Keys the tuning stages vary: each value off its default is a row of its own in tuning.md.
TUNED_KEYS=prompt.personal-head,loss.alpha,loss.beta,loss.gamma,loss.head,prompt.mix-theta
TUNED_KEYS=$TUNED_KEYS,train.lr,train.epochs,loss.prox-mu,prompt.rank,loss.pgp-weight
TUNED_KEYS=$TUNED_KEYS,loss.ot-marginal-reg,prompt.skew-low,prompt.skew-high,loss.moe-lambda
# Every complete run's record is kept beside the report (task.report.archive), so the report
# survives the run directories (a new machine has none): the archives are committed.
ARCHIVE=docs/results/runs-standin.jsonl
TUNING_ARCHIVE=docs/results/runs-standin-tuning.jsonl
# The tables are at one budget, BASE_ROUNDS (--at-round): a run extended to 20 rounds counts in
# them with its first 10 (what it was before), and on a page of its own at 20.
BASE_ROUNDS=10
# The stand-in's projections were aligned on these: a cross-dataset federation's clients of them
# are left out of the tables and paired differences (MODEL_CARD.md: never judge it there).
SEEN=aid,nwpu-resisc45
report() {
  python -m task.report --runs "$RUNS" --archive "$ARCHIVE" --out docs/results.md \
    --plots docs/results --at-round "$BASE_ROUNDS" --seen-datasets "$SEEN"
  if python - "$ARCHIVE" <<'PY'
import sys
from task.report.archive import read_archive
sys.exit(0 if any(r.num_rounds >= 20 for r in read_archive(sys.argv[1])) else 1)
PY
  then
    python -m task.report --runs "$RUNS" --archive "$ARCHIVE" --out docs/results/rounds20.md \
      --plots docs/results/rounds20 --at-round 20 --seen-datasets "$SEEN"
  fi
  # The tuning runs archived since 2026-12-04; docs/results/tuning*.md before it are frozen
  # pages of runs whose directories are gone.
  python -m task.report --runs "$TUNING_RUNS" --archive "$TUNING_ARCHIVE" \
    --out docs/results/tuning-runs.md --plots docs/results/tuning-runs --variant-keys "$TUNED_KEYS"
}

case "${1:-}" in
tune-recipe)
  tune even seed=0 method=zeroshot
  tune even seed=0 method=promptfl,fedrsclip ++run_config.train.lr=0.003,0.01,0.03
  tune even seed=0 method=promptfl,fedrsclip ++run_config.train.epochs=3
  ;;
tune-seeds)
  tune even seed=1,2 method=promptfl,fedrsclip
  ;;
tune-fedrsclip)
  tune even seed=0 method=fedrsclip ++run_config.loss.alpha=0.1,0.0
  tune even seed=0 method=fedrsclip ++run_config.loss.beta=1.0
  tune even seed=0 method=fedrsclip ++run_config.loss.gamma=0.1
  tune even seed=0 method=fedrsclip ++run_config.loss.head=clip
  ;;
tune-baselines)
  tune even seed=0 method=local,fedprox,fedotp,fedpgp
  tune even seed=0 method=fedprox ++run_config.loss.prox-mu=0.001,0.1
  tune even seed=0 method=fedpgp ++run_config.prompt.rank=1,4
  tune even seed=0 method=fedpgp ++run_config.loss.pgp-weight=0.1
  tune even seed=0 method=fedotp ++run_config.loss.ot-marginal-reg=1.0
  tune even seed=0 method=local ++run_config.train.lr=0.003,0.03
  ;;
tune-skew)
  tune dirichlet0.1 seed=0 method=zeroshot,local,promptfl,fedrsclip
  tune dirichlet0.1 seed=0 method=fedrsclip ++run_config.loss.alpha=0.1,0.0
  ;;
tune-head)
  # The personalised head of fedrsclip (issue 23) and PromptFolio's theta (issue 24), chosen on
  # validation under both label regimes; the references first.
  for split in even dirichlet0.1; do
    tune "$split" seed=0 method=zeroshot,local,promptfl,promptfolio,fedrsclip-concat
    tune "$split" seed=0 method=fedrsclip ++run_config.prompt.personal-head=private,auto,mix
    tune "$split" seed=0 method=fedrsclip ++run_config.prompt.personal-head=auto \
      ++run_config.loss.alpha=0.1,0.0
    tune "$split" seed=0 method=fedrsclip ++run_config.prompt.personal-head=auto \
      ++run_config.loss.beta=0.0
    tune "$split" seed=0 method=promptfolio ++run_config.prompt.mix-theta=0.2,0.6
  done
  ;;
tune-head-entropy)
  # The head from each client's own label skew (prompt.personal-head=entropy, the default since
  # this stage: theta ramps from the shared prompt at prompt.skew-low to the private one at
  # prompt.skew-high). The linear rule (skew-low 0, skew-high 1), then the ramp under the three
  # label regimes, and its DPA weight; the references under Dirichlet(0.5).
  for split in even dirichlet0.1; do
    tune "$split" seed=0 method=fedrsclip ++run_config.prompt.personal-head=entropy \
      ++run_config.prompt.skew-low=0.0 ++run_config.prompt.skew-high=1.0
  done
  for split in even dirichlet0.1 dirichlet0.5; do
    tune "$split" seed=0 method=fedrsclip
  done
  for split in even dirichlet0.1; do
    tune "$split" seed=0 method=fedrsclip ++run_config.loss.alpha=0.1
  done
  tune dirichlet0.5 seed=0 method=zeroshot,local,promptfl,promptfolio,fedrsclip-separate
  ;;
tune-new-baselines)
  # PromptFolio and pFedMoAP (issue 24) from their papers' defaults (theta 0.4; K = 10 experts,
  # lambda 0.5, a 128-wide 8-head gate), then the knob each paper names, on both splits.
  for split in even dirichlet0.1; do
    tune "$split" seed=0 method=pfedmoap
    tune "$split" seed=0 method=pfedmoap ++run_config.loss.moe-lambda=0.25,1.0
  done
  tune dirichlet0.1 seed=0 method=promptfolio ++run_config.prompt.mix-theta=0.2,0.6
  ;;
tune-head-seeds)
  # The spread: seeds 1 and 2 of the chosen head (the default) and the references, both splits.
  for split in even dirichlet0.1; do
    tune "$split" seed=1,2 method=promptfl,local,promptfolio,fedrsclip
  done
  ;;
test)
  # Stage 1 of the test grid (issue 28): 10 clients, every method and ablation, even /
  # Dirichlet(0.1) / Dirichlet(0.5), 3 seeds. In priority order, so that an interrupted grid
  # still holds complete cells: the methods on the two main splits seed by seed, then
  # Dirichlet(0.5), then the ablations.
  for seed in ${SEEDS:-0 1 2}; do
    test_grid "seed=$seed" federation=ucmerced_10 split=even,dirichlet0.1 "method=$MAIN"
  done
  for seed in ${SEEDS:-0 1 2}; do
    test_grid "seed=$seed" federation=ucmerced_10 split=dirichlet0.5 "method=$MAIN"
  done
  for seed in ${SEEDS:-0 1 2}; do
    test_grid "seed=$seed" federation=ucmerced_10 split=even,dirichlet0.1,dirichlet0.5 \
      "method=$ABLATIONS"
  done
  ;;
partitions)
  # A second partition seed (data.seed=1) of the 10-client even and Dirichlet(0.1) cells: the
  # paired statistics then span the partition as well as the training noise.
  for seed in ${SEEDS:-0 1 2}; do
    test_grid "seed=$seed" federation=ucmerced_10 split=even,dirichlet0.1 "method=$MAIN" \
      ++run_config.data.seed=1
  done
  ;;
test2040)
  # Stage 2: 20 and 40 clients, every method, even and Dirichlet(0.1).
  # FEDS narrows it (e.g. SEEDS=0 FEDS=ucmerced_20: one seed of the 20-client cells).
  for seed in ${SEEDS:-0 1 2}; do
    test_grid "seed=$seed" "federation=${FEDS:-ucmerced_20,ucmerced_40}" split=even,dirichlet0.1 \
      "method=$MAIN"
  done
  ;;
central)
  test_grid "seed=${SEEDS:-0}" federation=ucmerced_1 split=even \
    method=zeroshot,promptfl,fedprox,fedotp,fedpgp,fedrsclip
  ;;
fullft)
  # FedAvg of the whole image encoder + linear head on raw images (no feature cache).
  # shellcheck disable=SC2086
  python -m launcher -m "seed=${SEEDS:-0}" recipe=fullft-standin "rounds=$ROUNDS" \
    "$VAL" launch.continue_on_error=true "run_config.run.dir=$RUNS" ${GRID_OVERRIDES:-} \
    federation=ucmerced_10 split=even,dirichlet0.1 method=fedavg-full
  ;;
cross)
  # Stage 3: UC Merced + AID clients (report the UC Merced ones: AID helped build the model).
  for seed in ${SEEDS:-0 1 2}; do
    test_grid "seed=$seed" federation=cross_ucm_aid split=even "method=$CROSS_METHODS"
  done
  ;;
extend)
  # Stage 4: the same test runs resumed to $ROUNDS rounds (they keep their names: the number of
  # rounds names no run), for the cells the report lists under "Curves still rising".
  [ "$ROUNDS" -gt "$BASE_ROUNDS" ] || { echo "extend: set ROUNDS above $BASE_ROUNDS" >&2; exit 2; }
  [ $# -gt 1 ] || { echo "extend: name the cells (federation=... split=... method=...)" >&2; exit 2; }
  shift
  test_grid "seed=${SEEDS:-0,1,2}" "$@"
  ;;
report)
  report
  ;;
*)
  echo "usage: $0 tune-recipe|tune-seeds|tune-fedrsclip|tune-baselines|tune-skew|tune-head|tune-head-entropy|tune-new-baselines|tune-head-seeds|test|partitions|test2040|central|fullft|cross|extend|report" >&2
  exit 2
  ;;
esac
