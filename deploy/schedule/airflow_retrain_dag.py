"""Airflow DAG: daily retraining of the ae-pipeline autoencoder on Dataflow.

For each day (``{{ ds }}``, the run's logical date) it waits for the day's Parquet partition
(``<data root>/dt=YYYY-MM-DD/_SUCCESS``), then runs ``ae-pipeline train`` on it with
``--warm_start`` (continue from the newest published version) and
``--max_val_loss_increase 0.1`` (refuse a model whose validation loss is more than 10% worse
than the current one's). A refused model makes the job exit with status 3, which marks the
task *skipped*, not failed: the current version keeps serving. A published version is picked
up by the streaming job, which follows the same model root, without a restart.

``catchup`` with ``max_active_runs=1`` and ``depends_on_past`` backfills missed days one
partition at a time, in order, so every warm start continues from the previous day's model.

Airflow Variables (with defaults): ``ae_pipeline_project``, ``ae_pipeline_region``,
``ae_pipeline_bucket``, ``ae_pipeline_image`` (the SDK image from deploy/dataflow/). Runs on
Airflow 2.7+ and 3.x; needs ``ae-pipeline`` (same version as the image) on the workers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.sensors.python import PythonSensor
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.bash import BashOperator
    from airflow.sensors.python import PythonSensor

PROJECT = "{{ var.value.get('ae_pipeline_project', 'my-project') }}"
REGION = "{{ var.value.get('ae_pipeline_region', 'europe-west4') }}"
BUCKET = "{{ var.value.get('ae_pipeline_bucket', 'gs://my-project-ae-pipeline') }}"
IMAGE = (
    "{{ var.value.get('ae_pipeline_image', "
    "'europe-west4-docker.pkg.dev/my-project/ae-pipeline/ae-pipeline-cpu:0.1.0') }}"
)
PARTITION = BUCKET + "/events/dt={{ ds }}/"
REFUSED_EXIT_CODE = 3  # pipelines/train.py: the model was not published (gate refused it)

TRAIN_COMMAND = " ".join(
    [
        "ae-pipeline train",
        f"--input {PARTITION}",
        f"--model_root {BUCKET}/models",
        "--key_column id",
        "--hidden_dims 64,32 --latent_dim 8",
        "--epochs 30 --patience 5",
        "--threshold_method fpr --threshold_param 0.01",
        "--warm_start",
        "--max_val_loss_increase 0.1",
        "--progress false",
        "--runner DataflowRunner",
        f"--project {PROJECT} --region {REGION}",
        f"--temp_location {BUCKET}/tmp",
        f"--staging_location {BUCKET}/staging",
        "--job_name ae-train-{{ ds_nodash }}-{{ ts_nodash | lower }}",
        f"--sdk_container_image {IMAGE}",
        "--sdk_location container",
        "--result_file /tmp/ae-train-{{ ds_nodash }}.json",
    ]
)


def partition_ready(partition: str) -> bool:
    """True once the partition's ``_SUCCESS`` marker exists (Beam FileSystems: gs://, s3://,
    local paths)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(partition + "_SUCCESS")


with DAG(
    dag_id="ae_pipeline_retrain",
    description="Retrain the autoencoder on each new daily Parquet partition",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=True,
    max_active_runs=1,
    default_args={
        "owner": "ae-pipeline",
        "depends_on_past": True,
        "retries": 1,
        "retry_delay": timedelta(minutes=10),
    },
    tags=["ae-pipeline", "beam", "dataflow"],
) as dag:
    wait_for_partition = PythonSensor(
        task_id="wait_for_partition",
        python_callable=partition_ready,
        op_kwargs={"partition": PARTITION},
        mode="reschedule",
        poke_interval=600,
        timeout=12 * 3600,
    )
    train = BashOperator(
        task_id="train",
        bash_command=TRAIN_COMMAND,
        skip_on_exit_code=REFUSED_EXIT_CODE,
        execution_timeout=timedelta(hours=4),
    )
    wait_for_partition >> train
