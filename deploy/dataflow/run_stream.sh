#!/usr/bin/env bash
# Launch the streaming Flex Template on GPU workers (one NVIDIA L4 each).
#
#   PROJECT=my-project KAFKA=broker-1:9093,broker-2:9093 deploy/dataflow/run_stream.sh [mps]
#
# The Kafka client settings (SASL/SSL) come from a JSON file on Cloud Storage
# ($BUCKET/secure/kafka-client.json, see deploy/kafka/client-sasl.sample.json); keep that
# bucket private. With "mps": NVIDIA MPS, so the SDK processes of a worker share the GPU
# (see deploy/dataflow/README.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/dataflow/env.sh
source "$ROOT/deploy/dataflow/env.sh"
: "${KAFKA:?set KAFKA to the bootstrap servers (host:port,...)}"
SERVICE_OPTIONS="$GPU_SERVICE_OPTIONS"
if [ "${1:-}" = mps ]; then
  SERVICE_OPTIONS="$GPU_SERVICE_OPTIONS;use_nvidia_mps"
fi

gcloud dataflow flex-template run "ae-stream-$(date -u +%Y%m%d-%H%M%S)" \
  --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "$BUCKET/templates/ae-pipeline-stream.json" \
  --temp-location "$BUCKET/tmp" --staging-location "$BUCKET/staging" \
  --enable-streaming-engine \
  --worker-machine-type "$GPU_MACHINE_TYPE" \
  --additional-pipeline-options "dataflow_service_options=$SERVICE_OPTIONS" \
  --parameters "^~^bootstrap_servers=$KAFKA" \
  --parameters "kafka_config=$BUCKET/secure/kafka-client.json" \
  --parameters "kafka_client=confluent" \
  --parameters "input_topic=ae-events" \
  --parameters "output_topic=ae-scores" \
  --parameters "dead_letter_topic=ae-events-dlq" \
  --parameters "group_id=ae-pipeline-stream" \
  --parameters "mode=flag" \
  --parameters "model_root=$MODEL_ROOT" \
  --parameters "model_poll_interval_s=60" \
  --parameters "device=cuda" \
  --parameters "sdk_container_image=$REPOSITORY/ae-pipeline-gpu:$VERSION"
