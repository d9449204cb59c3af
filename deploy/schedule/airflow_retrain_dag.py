"""Airflow DAGs: retraining of the ae-pipeline autoencoder on Dataflow, daily and on drift.

``ae_pipeline_retrain`` (daily): for each day (``{{ ds }}``, the run's logical date) it waits for
the day's Parquet partition (``<data root>/dt=YYYY-MM-DD/_SUCCESS``), then launches the training
Flex Template (``deploy/dataflow/``: ``ae-pipeline train`` in the SDK image) on it with
``warm_start`` (continue from the newest published version) and ``max_val_loss_increase=0.1``
(refuse a model whose validation loss is more than 10% worse than the current one's: the job
publishes nothing and the current version keeps serving). ``catchup`` with
``max_active_runs=1`` and ``depends_on_past`` backfills missed days one partition at a time, in
order, so every warm start continues from the previous day's model.

``ae_pipeline_retrain_on_drift`` (continuous): waits for a ``drift`` event on the drift topic
(Kafka provider's ``AwaitMessageSensor``, deferred to the triggerer; the consumers and the
streaming job send the events, README "Operating"), then runs ``ae-pipeline train`` on
Dataflow over yesterday's complete partition (Beam provider's
``BeamRunPythonPipelineOperator``); then waits for the next event. A refused model fails the
train task, with the refusal in its log; the serving version stays.

Both publish under the model root the streaming jobs follow; they pick a new version up
without a restart.

Airflow Variables (with defaults): ``ae_pipeline_project``, ``ae_pipeline_region``,
``ae_pipeline_bucket``, ``ae_pipeline_image`` (the SDK image from deploy/dataflow/). Airflow
Connection ``ae_pipeline_kafka`` (type Kafka): the brokers and client settings of the drift
topic. Needs Airflow 3 with apache-airflow-providers-google, -apache-beam and -apache-kafka,
and ``ae-pipeline`` (same version as the image) on the workers and the triggerer.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.apache.beam.hooks.beam import BeamRunnerType
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.apache.kafka.sensors.kafka import AwaitMessageSensor
from airflow.providers.google.cloud.operators.dataflow import (
    DataflowConfiguration,
    DataflowStartFlexTemplateOperator,
)
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG

PROJECT = "{{ var.value.get('ae_pipeline_project', 'my-project') }}"
REGION = "{{ var.value.get('ae_pipeline_region', 'europe-west4') }}"
BUCKET = "{{ var.value.get('ae_pipeline_bucket', 'gs://my-project-ae-pipeline') }}"
IMAGE = (
    "{{ var.value.get('ae_pipeline_image', "
    "'europe-west4-docker.pkg.dev/my-project/ae-pipeline/ae-pipeline-cpu:0.1.0') }}"
)
PARTITION = BUCKET + "/events/dt={{ ds }}/"
# The drift DAG trains on the newest complete partition: yesterday's.
DRIFT_PARTITION = BUCKET + "/events/dt={{ macros.ds_add(ds, -1) }}/"
DRIFT_TOPIC = "ae-drift"
KAFKA_CONNECTION = "ae_pipeline_kafka"
# Imported by the triggerer: a drift event's JSON when the message is one, else None.
DRIFT_EVENT_FUNCTION = "ae_pipeline.ops.retrain.drift_event"

# The training job's options (pipelines/train.py), shared by both DAGs.
TRAIN_OPTIONS = {
    "model_root": BUCKET + "/models",
    "key_column": "id",
    "hidden_dims": "64,32",
    "latent_dim": "8",
    "epochs": "30",
    "patience": "5",
    "threshold_method": "fpr",
    "threshold_param": "0.01",
    "warm_start": "true",
    "max_val_loss_increase": "0.1",
}

# The Flex Template's launch body: parameters are the job's options plus the SDK image.
FLEX_TEMPLATE_BODY = {
    "launchParameter": {
        "jobName": "ae-train-{{ ds_nodash }}-{{ ts_nodash | lower }}",
        "containerSpecGcsPath": BUCKET + "/templates/ae-pipeline-train.json",
        "parameters": {
            "input": PARTITION,
            **TRAIN_OPTIONS,
            "sdk_container_image": IMAGE,
        },
        "environment": {
            "tempLocation": BUCKET + "/tmp",
            "stagingLocation": BUCKET + "/staging",
        },
    }
}


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
    train = DataflowStartFlexTemplateOperator(
        task_id="train",
        project_id=PROJECT,
        location=REGION,
        body=FLEX_TEMPLATE_BODY,
        wait_until_finished=True,
        execution_timeout=timedelta(hours=4),
    )
    wait_for_partition >> train


with DAG(
    dag_id="ae_pipeline_retrain_on_drift",
    description="Retrain the autoencoder when the live scores drift from its calibration",
    schedule="@continuous",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ae-pipeline", "retries": 0},
    tags=["ae-pipeline", "beam", "dataflow", "kafka", "drift"],
) as drift_dag:
    await_drift = AwaitMessageSensor(
        task_id="await_drift",
        kafka_config_id=KAFKA_CONNECTION,
        topics=[DRIFT_TOPIC],
        apply_function=DRIFT_EVENT_FUNCTION,
        xcom_push_key="drift_event",
    )
    train_on_drift = BeamRunPythonPipelineOperator(
        task_id="train_on_drift",
        runner=BeamRunnerType.DataflowRunner,
        py_file="pipelines.train",
        py_options=["-m"],
        pipeline_options={
            "input": DRIFT_PARTITION,
            **TRAIN_OPTIONS,
            "temp_location": BUCKET + "/tmp",
            "staging_location": BUCKET + "/staging",
            "sdk_container_image": IMAGE,
            "sdk_location": "container",
        },
        dataflow_config=DataflowConfiguration(
            job_name="ae-train-drift-{{ ts_nodash | lower }}",
            project_id=PROJECT,
            location=REGION,
            wait_until_finished=True,
        ),
        execution_timeout=timedelta(hours=4),
    )
    await_drift >> train_on_drift
