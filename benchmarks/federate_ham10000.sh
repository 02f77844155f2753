#!/usr/bin/env bash
# Federated vs central training of the released recipe on HAM10000, at equal total epochs
# (4 rounds x 3 local epochs = the recipe's 12), on the same lesion-grouped holdout (seed 0).
# Three sites made by body site; FedAvg, then FedProx (mu 0.01). Each run also trains the
# central model (--central) and writes RUN/comparison.json (federated - central, lesion
# bootstrap). Hours on a 2-core CPU; minutes on a GPU (add --device cuda).
# Usage: benchmarks/federate_ham10000.sh [DATA] [ENGINE]   (ENGINE: auto | simulation | processes)
set -euo pipefail
DATA="${1:-../shared/data/ham10000}"
ENGINE="${2:-auto}"
common=(--config configs/ham10000_single.yaml --sites 3 --rounds 4 --local-epochs 3 --site-rule site
        --engine "$ENGINE" --set train.calibration=none --central)
dermfuse federate "$DATA" "${common[@]}" --out runs/federate_release128
dermfuse federate "$DATA" "${common[@]}" --strategy fedprox --mu 0.01 --out runs/federate_release128_prox
for run in runs/federate_release128 runs/federate_release128_prox; do
  python - "$run" <<'PY'
import json, sys
c = json.load(open(f"{sys.argv[1]}/comparison.json"))["federated_minus_central"]["balanced_accuracy"]
print(f"{sys.argv[1]}: federated - central balanced accuracy {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]")
PY
done
