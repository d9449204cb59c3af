#!/usr/bin/env bash
# Launch the training Flex Template over one dated Parquet partition.
#
#   PROJECT=my-project deploy/dataflow/run_train.sh 2026-11-26 [gpu]
#
# (gcloud splits --parameters at commas: "^~^" switches the separator for values with commas.)
# Reads $BUCKET/events/dt=<date>/, continues from the newest published version (--warm_start)
# and refuses to publish a model whose validation loss is >10% worse than the current one.
# With "gpu": GPU workers (an L4 each) and the GPU image.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/dataflow/env.sh
source "$ROOT/deploy/dataflow/env.sh"
DAY="${1:-$(date -u -d yesterday +%F)}"
FLAVOUR="${2:-cpu}"

TEMPLATE="$BUCKET/templates/ae-pipeline-train.json"
IMAGE="$REPOSITORY/ae-pipeline-cpu:$VERSION"
EXTRA=()
if [ "$FLAVOUR" = gpu ]; then
  TEMPLATE="$BUCKET/templates/ae-pipeline-train-gpu.json"
  IMAGE="$REPOSITORY/ae-pipeline-gpu-train:$VERSION"
  EXTRA=(--worker-machine-type "$GPU_MACHINE_TYPE"
         --additional-pipeline-options "dataflow_service_options=$GPU_SERVICE_OPTIONS")
fi
gcloud dataflow flex-template run "ae-train-${DAY//-/}-$(date -u +%H%M%S)" \
  --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "$TEMPLATE" \
  --temp-location "$BUCKET/tmp" --staging-location "$BUCKET/staging" \
  --parameters "input=$BUCKET/events/dt=$DAY/" \
  --parameters "model_root=$MODEL_ROOT" \
  --parameters "key_column=id" \
  --parameters "^~^hidden_dims=64,32" \
  --parameters "latent_dim=8" \
  --parameters "epochs=30" \
  --parameters "patience=5" \
  --parameters "threshold_method=fpr" \
  --parameters "threshold_param=0.01" \
  --parameters "warm_start=true" \
  --parameters "max_val_loss_increase=0.1" \
  --parameters "sdk_container_image=$IMAGE" \
  "${EXTRA[@]}"
