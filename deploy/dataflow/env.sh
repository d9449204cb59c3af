# Settings shared by the Dataflow scripts; override any of them in the environment.
#   source deploy/dataflow/env.sh
: "${PROJECT:?set PROJECT to your Google Cloud project id}"
: "${REGION:=europe-west4}"
: "${BUCKET:=gs://${PROJECT}-ae-pipeline}"
: "${REPOSITORY:=${REGION}-docker.pkg.dev/${PROJECT}/ae-pipeline}"
: "${VERSION:=0.1.0}"
: "${MODEL_ROOT:=${BUCKET}/models}"
# GPU workers: an L4 per worker (G2 machine types carry L4s), driver installed by Dataflow.
: "${GPU_MACHINE_TYPE:=g2-standard-4}"
: "${GPU_SERVICE_OPTIONS:=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver}"
export PROJECT REGION BUCKET REPOSITORY VERSION MODEL_ROOT GPU_MACHINE_TYPE GPU_SERVICE_OPTIONS
