#!/usr/bin/env bash
# Build and push the ae-pipeline SDK images and write the two Flex Template specs.
#
#   PROJECT=my-project deploy/dataflow/build.sh
#
# Images (one per template: same layers, FLEX_TEMPLATE_PYTHON_PY_FILE differs):
#   Beam 2.77.0, the newest tested (the Dockerfiles' default; requirements/lock.txt):
#   $REPOSITORY/ae-pipeline-cpu:$VERSION        CPU: training template, CPU workers, the drift
#                                               listener
#   $REPOSITORY/ae-pipeline-gpu-train:$VERSION  GPU: training template (and the k8s CronJob)
#   $REPOSITORY/ae-pipeline-gpu:$VERSION        GPU: streaming template, Dataflow workers
#   Beam 2.62.0, for Flink (deploy/flink/k8s; Beam's Flink runner and job server stop at 2.62):
#   $REPOSITORY/ae-pipeline-flink-cpu:$VERSION  the job submitter (stream-job.yaml)
#   $REPOSITORY/ae-pipeline-flink-gpu:$VERSION  the TaskManagers' Beam worker-pool sidecar
# Template specs: $BUCKET/templates/ae-pipeline-{train,train-gpu,stream}.json
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/dataflow/env.sh
source "$ROOT/deploy/dataflow/env.sh"

build() {  # build <Dockerfile> <job> <tag> [docker build args...]
  docker build -f "$ROOT/deploy/dataflow/$1" --build-arg "JOB=$2" -t "$3" "${@:4}" "$ROOT"
  docker push "$3"
}
build Dockerfile.cpu train "$REPOSITORY/ae-pipeline-cpu:$VERSION"
build Dockerfile.gpu train "$REPOSITORY/ae-pipeline-gpu-train:$VERSION"
build Dockerfile.gpu stream "$REPOSITORY/ae-pipeline-gpu:$VERSION"
# The Flink images: the Beam of the Flink job server (deploy/flink/k8s/beam-job-server.yaml) in
# the submitter and in the SDK harness, with requirements/beam-2.62.txt over the lock.
FLINK_BEAM=(--build-arg BEAM_VERSION=2.62.0 --build-arg BEAM_PINS=requirements/beam-2.62.txt)
build Dockerfile.cpu stream "$REPOSITORY/ae-pipeline-flink-cpu:$VERSION" "${FLINK_BEAM[@]}"
build Dockerfile.gpu stream "$REPOSITORY/ae-pipeline-flink-gpu:$VERSION" "${FLINK_BEAM[@]}"

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
