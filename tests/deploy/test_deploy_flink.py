"""Flink: the operator deployment is consistent with itself, with Beam's Flink runner and with
Flink's real configuration options; and the streaming job runs on a real multi-process Flink
session cluster (a JobManager and a TaskManager JVM, started by deploy/flink/local_cluster.py),
submitted through Beam's Flink job server, reading and writing the real test broker."""

from __future__ import annotations

import functools
import json
import re
import socket
import time
import uuid
import zipfile
from collections import Counter

import pytest
from apache_beam.runners.runner import PipelineState
from deploy_kit import DEPLOY, REPO, all_invocations, yaml_docs

from ae_pipeline.kafka import create_consumer, create_producer, create_topics, end_offsets
from ae_pipeline.local.paths import classpath_dir, launcher_jar

K8S = DEPLOY / "flink" / "k8s"


def _doc(name: str, kind: str) -> dict:
    (doc,) = [d for d in yaml_docs(K8S / name) if d["kind"] == kind]
    return doc


@functools.cache
def _flink_config_keys() -> set[str]:
    """String constants of Flink's own classes that look like configuration keys: every
    ``ConfigOptions.key("...")`` of the Flink 1.19 modules of the session-cluster classpath."""
    from local_cluster import resolve_classpath

    keys: set[str] = set()
    for jar in (resolve_classpath() / "lib").glob("flink-*.jar"):
        with zipfile.ZipFile(jar) as zf:
            for entry in zf.namelist():
                if entry.endswith("Options.class") or entry.endswith("Config.class"):
                    data = zf.read(entry)
                    keys.update(
                        m.decode()
                        for m in re.findall(rb"[a-z][a-z0-9-]*(?:\.[A-Za-z0-9-]+)+", data)
                    )
    return keys


def test_flink_configuration_keys_exist_in_flink():
    from local_cluster import FlinkSessionCluster

    known = _flink_config_keys()
    operator = _doc("flink-deployment.yaml", "FlinkDeployment")["spec"]["flinkConfiguration"]
    local = FlinkSessionCluster(work_dir=REPO / "logs").flink_config()
    for where, config in (("flink-deployment.yaml", operator), ("local_cluster.py", local)):
        unknown = sorted(k for k in set(config) - known if not _reporter_option(k))
        assert not unknown, f"{where}: not Flink 1.19 configuration keys: {unknown}"
    # The reporter the deployment configures is the one the local cluster runs.
    from local_cluster import PROMETHEUS_REPORTER

    assert operator["metrics.reporter.prom.factory.class"] == PROMETHEUS_REPORTER
    assert _reporter_option("metrics.reporter.prom.port")
    assert not _reporter_option("metrics.reporter.prom.prot")


def _reporter_option(key: str) -> bool:
    """``metrics.reporter.<name>.<option>``: ``factory.class`` (Flink's), or an option the
    Prometheus reporter's own classes name (``port``)."""
    from local_cluster import resolve_classpath

    parts = key.split(".")
    if parts[:2] != ["metrics", "reporter"] or len(parts) < 4:
        return False
    option = ".".join(parts[3:])
    if option == "factory.class":
        return True
    (jar,) = (resolve_classpath() / "lib").glob("flink-metrics-prometheus-*.jar")
    with zipfile.ZipFile(jar) as zf:
        data = zf.read("org/apache/flink/metrics/prometheus/PrometheusReporterFactory.class")
    return re.search(rb"\x00" + bytes([len(option)]) + re.escape(option.encode()), data) is not None


def test_flink_deployment_matches_beams_flink_runner_and_the_job():
    from kit.beam_envs import FLINK as FLINK_BEAM  # the Beam the Flink deployment runs

    fd = _doc("flink-deployment.yaml", "FlinkDeployment")
    spec = fd["spec"]
    # Beam 2.62.0's Flink runner is built for Flink 1.19: cluster, job server and local recipe.
    runner_jar = [p.name for p in (classpath_dir("flink") / "lib").glob("beam-runners-flink-*")]
    assert runner_jar == [f"beam-runners-flink-1.19-{FLINK_BEAM}.jar"]
    assert spec["flinkVersion"] == "v1_19"
    assert re.match(r"^flink:1\.19\.\d+-java17$", spec["image"])
    flink_patch = spec["image"].split(":")[1].split("-")[0]
    pom = (DEPLOY / "local" / "flink-dist" / "pom.xml").read_text()
    assert "<flink.version>1.19." in pom

    config = spec["flinkConfiguration"]
    assert config["execution.checkpointing.interval"]
    assert config["state.checkpoints.dir"].startswith("gs://")
    tm = spec["taskManager"]["podTemplate"]["spec"]
    containers = {c["name"]: c for c in tm["containers"]}
    plugin = next(e["value"] for e in containers["flink-main-container"]["env"])
    assert plugin == f"flink-gs-fs-hadoop-{flink_patch}.jar", "gs:// needs the GCS plugin"
    pool = containers["beam-worker-pool"]
    assert pool["args"] == ["--worker_pool"]
    assert pool["resources"]["limits"]["nvidia.com/gpu"] == 1, "the SDK harness gets the GPU"
    assert "nvidia.com/gpu" not in json.dumps(containers["flink-main-container"])
    pool_port = pool["ports"][0]["containerPort"]
    slots = int(config["taskmanager.numberOfTaskSlots"])

    server = _doc("beam-job-server.yaml", "Deployment")["spec"]["template"]["spec"]
    (js,) = server["containers"]
    assert js["image"] == f"apache/beam_flink1.19_job_server:{FLINK_BEAM}"
    assert f"--flink-master={fd['metadata']['name']}-rest:8081" in js["args"]
    service = _doc("beam-job-server.yaml", "Service")

    (inv,) = [i for i in all_invocations() if i.where.startswith("deploy/flink/k8s/stream-job")]
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in inv.args)
    assert args["--runner"] == "PortableRunner"
    host, port = args["--job_endpoint"].split(":")
    assert host == service["metadata"]["name"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert f"--job-port={port}" in js["args"]
    assert args["--environment_type"] == "EXTERNAL"
    assert args["--environment_config"] == f"localhost:{pool_port}"
    assert int(args["--checkpointing_interval"]) > 0
    # The options that make a checkpointed stream job emit at all (see local_cluster.py).
    from local_cluster import CHECKPOINTING_ARGS

    assert set(CHECKPOINTING_ARGS) <= set(inv.args)
    assert int(args["--parallelism"]) <= slots * spec["taskManager"]["replicas"]


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    with create_producer({"bootstrap.servers": bootstrap}) as producer:
        for v in values:
            producer.send(topic, v)
        producer.flush(30)


def _read_json(bootstrap: str, topic: str) -> list[dict]:
    ends = end_offsets({"bootstrap.servers": bootstrap}, topic)
    out: list = []
    with create_consumer({"bootstrap.servers": bootstrap}) as consumer:
        consumer.assign(dict.fromkeys(ends, 0))
        deadline = time.monotonic() + 30
        while len(out) < sum(ends.values()) and time.monotonic() < deadline:
            out.extend(consumer.poll(0.5, 5000))
    return [json.loads(r.value) for r in out]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.kafka
@pytest.mark.flink
@pytest.mark.slow
def test_stream_job_on_a_flink_session_cluster(
    flink_session_cluster, bootstrap_servers, tmp_path, beam_options
):
    import kit

    from ae_pipeline.registry import ModelRegistry
    from ae_pipeline.serving import ServingModel
    from pipelines import stream

    beam_options("flink", streaming=True)  # records the runner in the session summary
    cluster = flink_session_cluster
    root = str(tmp_path / "models")
    version = kit.publish(root, kit.train(epochs=8))
    tag = uuid.uuid4().hex[:8]
    inp, out, dlq = f"fl-in-{tag}", f"fl-out-{tag}", f"fl-dlq-{tag}"
    create_topics({"bootstrap.servers": bootstrap_servers}, {inp: 2, out: 1, dlq: 1})
    values, n_poison = kit.records_with_poison(200, anomalies=5)
    _produce(bootstrap_servers, inp, values)

    argv = [
        *cluster.beam_args(launcher_jar("flink"), parallelism=2),
        # Streaming mode, bounded read: the job ends when both partitions reach the end offsets
        # they had at start. (No checkpointing here: with it, Beam keeps Flink's impulse source
        # alive for checkpoints and a bounded job never finishes.)
        "--streaming",
        "--bounded",
        *kit.stream_job_args(bootstrap_servers, inp, out, dlq, f"g-{tag}", root, "--top_k=0"),
    ]
    result = stream.main(argv, wait=False)
    try:
        state = result.wait_until_finish(duration=240_000)
    finally:
        if not PipelineState.is_terminal(result.state):
            result.cancel()
    assert state == PipelineState.DONE, f"{state}; logs:\n{cluster.log_tails()}"

    # The job ran on the session cluster (not an embedded mini cluster): the JobManager lists it
    # as finished, and the TaskManager JVM ran its tasks.
    jobs = cluster.jobs()
    assert [j["state"] for j in jobs] == ["FINISHED"], jobs
    tm_log = (cluster.log_dir / "taskmanager-0.log").read_text()
    assert re.search(r"Read.*switched from RUNNING to FINISHED", tm_log)

    # Every good record has exactly one result; every poison record is a dead letter with its
    # reason; the flags equal the model's offline scores.
    results, dead = _read_json(bootstrap_servers, out), _read_json(bootstrap_servers, dlq)
    assert len(dead) == n_poison
    assert sorted(d["reason"] for d in dead) == sorted(kit.POISON)
    assert Counter(r["key"] for r in results) == Counter(range(200))
    assert {r["model_version"] for r in results} == {version}
    model = ServingModel.load(ModelRegistry(root).path(version), device="cpu", top_k=None)
    offline, _ = model.score_records(values, "flag")
    by_key = {r["key"]: r for r in results}
    for r in offline:
        got = by_key[r["key"]]
        # Scores of separate scoring calls (other batch sizes) agree to float32 rounding, not
        # bit for bit: rel=1e-4 is far above that (~1e-6) and far below a real difference.
        assert got["score"] == pytest.approx(r["score"], rel=1e-4)
        # ... so a flag may differ only for a score that close to the threshold.
        if got["score"] != pytest.approx(r["threshold"], rel=1e-4):
            assert got["is_anomaly"] == r["is_anomaly"], (got, r)
    assert sum(r["is_anomaly"] for r in results) >= 5

    # Stop: both JVMs are gone, the ports are closed, the logs stay.
    procs = list(cluster.procs.values())
    cluster.stop()
    assert all(p.poll() is not None for p in procs)
    assert not _port_open(cluster.rest_port) and not _port_open(cluster.rpc_port)
    assert (cluster.log_dir / "jobmanager.log").stat().st_size > 0


def _committed(bootstrap: str, group: str, topic: str) -> dict:
    tps = list(end_offsets({"bootstrap.servers": bootstrap}, topic))
    with create_consumer({"bootstrap.servers": bootstrap, "group.id": group}) as consumer:
        return consumer.committed(tps)


def _run_until(result, cluster, what: str, done, timeout_s: float = 240.0) -> None:
    """Polls ``done()`` every 2 s while the job runs; fails with the cluster's logs."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert not PipelineState.is_terminal(result.state), (
            f"job ended ({result.state}) before {what}; logs:\n{cluster.log_tails()}"
        )
        assert time.monotonic() < deadline, (
            f"no {what} within {timeout_s:.0f} s; logs:\n{cluster.log_tails()}"
        )
        time.sleep(2)


def _completed_checkpoints(cluster, jid: str) -> int:
    return cluster.rest(f"/jobs/{jid}/checkpoints")["counts"]["completed"]


def _cancel(result, cluster) -> None:
    # Beam's cancel through the job server leaves the Flink job running: cancel it over REST.
    result.cancel()
    assert len(cluster.cancel_all()) == 1
    assert {j["state"] for j in cluster.jobs()} <= {"CANCELED", "FINISHED"}


@pytest.mark.kafka
@pytest.mark.flink
@pytest.mark.slow
def test_checkpointed_stream_job_commits_offsets_and_resumes_on_a_flink_session_cluster(
    flink_session_cluster, bootstrap_servers, tmp_path, beam_options
):
    """Unbounded stream job with 1 s checkpoints (the deployment's options): it scores every
    record, the group's offsets reach the end offsets (lag 0: on Flink the read commits when a
    checkpoint completes), and after a cancel and a new submission with the same group it
    scores only the records produced since - nothing twice."""
    import kit

    from pipelines import stream

    beam_options("flink", streaming=True)
    cluster = flink_session_cluster
    root = str(tmp_path / "models")
    kit.publish(root, kit.train(epochs=4))
    tag = uuid.uuid4().hex[:8]
    inp, out, dlq, group = f"ck-in-{tag}", f"ck-out-{tag}", f"ck-dlq-{tag}", f"ck-g-{tag}"
    create_topics({"bootstrap.servers": bootstrap_servers}, {inp: 2, out: 1, dlq: 1})
    first, n_poison = kit.records_with_poison(100)
    _produce(bootstrap_servers, inp, first)
    argv = [
        *cluster.beam_args(launcher_jar("flink"), parallelism=2, checkpointing_interval_ms=1000),
        "--streaming",
        *kit.stream_job_args(bootstrap_servers, inp, out, dlq, group, root),
    ]

    def caught_up() -> bool:
        ends = end_offsets({"bootstrap.servers": bootstrap_servers}, inp)
        return _committed(bootstrap_servers, group, inp) == ends

    def scored(n: int):
        return lambda: sum(end_offsets({"bootstrap.servers": bootstrap_servers}, out).values()) >= n

    result = stream.main(argv, wait=False)
    try:
        _run_until(result, cluster, "100 results", scored(100))
        _run_until(result, cluster, "offsets committed up to the end", caught_up)
        (job,) = cluster.jobs()
        assert _completed_checkpoints(cluster, job["jid"]) >= 1
    finally:
        _cancel(result, cluster)
    assert sum(_committed(bootstrap_servers, group, inp).values()) == len(first)

    # Restart from the group's offsets: only the 40 new records are scored.
    second = [kit.record(1000 + i, r) for i, r in enumerate(kit.normal_rows(40, seed=7))]
    _produce(bootstrap_servers, inp, second)
    result = stream.main(argv, wait=False)
    try:
        _run_until(result, cluster, "140 results", scored(140))
        _run_until(result, cluster, "offsets committed up to the end", caught_up)
        # A few more checkpoints (each one commits offsets): nothing else may arrive.
        (job,) = [j for j in cluster.jobs() if j["state"] == "RUNNING"]
        done = _completed_checkpoints(cluster, job["jid"])
        _run_until(
            result,
            cluster,
            "three more checkpoints",
            lambda: _completed_checkpoints(cluster, job["jid"]) >= done + 3,
        )
    finally:
        _cancel(result, cluster)
    results, dead = _read_json(bootstrap_servers, out), _read_json(bootstrap_servers, dlq)
    assert Counter(r["key"] for r in results) == Counter([*range(100), *range(1000, 1040)])
    assert len(dead) == n_poison
    assert sum(_committed(bootstrap_servers, group, inp).values()) == len(first) + len(second)
