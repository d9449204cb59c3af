#!/usr/bin/env bash
# Build and push the ae-pipeline SDK images and write the two Flex Template specs.
#
#   PROJECT=my-project deploy/dataflow/build.sh
#
# Images (one per template: same layers, FLEX_TEMPLATE_PYTHON_PY_FILE differs):
#   $REPOSITORY/ae-pipeline-cpu:$VERSION        CPU: training template, CPU workers, job submitters
#   $REPOSITORY/ae-pipeline-gpu-train:$VERSION  GPU: training template (and the k8s CronJob)
#   $REPOSITORY/ae-pipeline-gpu:$VERSION        GPU: streaming template, workers, Flink sidecar
# Template specs: $BUCKET/templates/ae-pipeline-{train,train-gpu,stream}.json
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/dataflow/env.sh
source "$ROOT/deploy/dataflow/env.sh"

build() {  # build <Dockerfile> <job> <tag>
  docker build -f "$ROOT/deploy/dataflow/$1" --build-arg "JOB=$2" -t "$3" "$ROOT"
  docker push "$3"
}
build Dockerfile.cpu train "$REPOSITORY/ae-pipeline-cpu:$VERSION"
build Dockerfile.gpu train "$REPOSITORY/ae-pipeline-gpu-train:$VERSION"
build Dockerfile.gpu stream "$REPOSITORY/ae-pipeline-gpu:$VERSION"

gcloud dataflow flex-template build "$BUCKET/templates/ae-pipeline-train.json" \
  --image "$REPOSITORY/ae-pipeline-cpu:$VERSION" \
  --sdk-language PYTHON \
  --metadata-file "$ROOT/deploy/dataflow/templates/train-metadata.json"
gcloud dataflow flex-template build "$BUCKET/templates/ae-pipeline-train-gpu.json" \
  --image "$REPOSITORY/ae-pipeline-gpu-train:$VERSION" \
  --sdk-language PYTHON \
  --metadata-file "$ROOT/deploy/dataflow/templates/train-metadata.json"
gcloud dataflow flex-template build "$BUCKET/templates/ae-pipeline-stream.json" \
  --image "$REPOSITORY/ae-pipeline-gpu:$VERSION" \
  --sdk-language PYTHON \
  --metadata-file "$ROOT/deploy/dataflow/templates/stream-metadata.json"
