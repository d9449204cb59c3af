#!/usr/bin/env bash
# The streaming job on Dataflow GPU workers without a template: the pipeline is built here
# (needs ae-pipeline installed locally, same Beam version as the image) and runs in the image.
#
#   PROJECT=my-project KAFKA=broker:9093 KAFKA_CONFIG=kafka-client.json \
#       deploy/dataflow/run_stream_direct.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/dataflow/env.sh
source "$ROOT/deploy/dataflow/env.sh"
: "${KAFKA:?set KAFKA to the bootstrap servers (host:port,...)}"
: "${KAFKA_CONFIG:?set KAFKA_CONFIG to a local JSON file of Kafka client settings}"

python -m pipelines.stream \
  --runner DataflowRunner \
  --project "$PROJECT" --region "$REGION" \
  --temp_location "$BUCKET/tmp" --staging_location "$BUCKET/staging" \
  --job_name "ae-stream-$(date -u +%Y%m%d-%H%M%S)" \
  --streaming \
  --enable_streaming_engine \
  --sdk_container_image "$REPOSITORY/ae-pipeline-gpu:$VERSION" \
  --sdk_location container \
  --machine_type "$GPU_MACHINE_TYPE" \
  --dataflow_service_options "$GPU_SERVICE_OPTIONS" \
  --max_num_workers 4 \
  --bootstrap_servers "$KAFKA" \
  --kafka_config "$KAFKA_CONFIG" \
  --kafka_client confluent \
  --input_topic ae-events \
  --output_topic ae-scores \
  --dead_letter_topic ae-events-dlq \
  --group_id ae-pipeline-stream \
  --mode flag \
  --model_root "$MODEL_ROOT" \
  --model_poll_interval_s 60 \
  --device cuda
