"""Model faults while serving: truncated weights, a checksum mismatch, configs whose width does
not fit, pickles (and a torch.save zip) where the weights belong, and a version published while
scoring. Each faulty version is refused with a clear error while the previous version keeps
serving, in a :class:`ModelWatcher` and in the Kafka consumer; the pickles never execute."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import threading
import uuid
from collections import defaultdict
from pathlib import Path

import kit
import pytest
import reliability_kit as rel

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.features import FeatureSpec
from ae_pipeline.hot_reload import ModelWatcher
from ae_pipeline.registry import ModelRegistry

WEIGHTS, CONFIG, CHECKSUMS = "weights.safetensors", "config.json", "checksums.json"


class Plant:
    """Unpickling this creates the file ``path``: proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rechecksum(d: Path) -> None:
    """Makes checksums.json (sums and sizes) match the files again, so that only the format
    check stands."""
    sums = json.loads((d / CHECKSUMS).read_text())
    for name in (WEIGHTS, CONFIG):
        sums["files"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
        sums["sizes"][name] = (d / name).stat().st_size
    (d / CHECKSUMS).write_text(json.dumps(sums))


def _truncate(d: Path, _plant: Path) -> None:
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: len(data) // 2])


def _flip_a_weight_bit(d: Path, _plant: Path) -> None:
    data = bytearray((d / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (d / WEIGHTS).write_bytes(bytes(data))


def _config_width(d: Path, _plant: Path) -> None:
    config = json.loads((d / CONFIG).read_text())
    config["model_config"]["input_dim"] = 7
    (d / CONFIG).write_text(json.dumps(config))
    _rechecksum(d)


def _pickle(protocol: int):
    def plant(d: Path, path: Path) -> None:
        (d / WEIGHTS).write_bytes(pickle.dumps(Plant(path), protocol=protocol))
        _rechecksum(d)

    return plant


def _torch_zip(d: Path, path: Path) -> None:
    import torch

    torch.save({"encoder.0.linear.weight": Plant(path)}, d / WEIGHTS)
    _rechecksum(d)


SEVEN = FeatureSpec(columns=[*kit.COLUMNS, "f6"], key_column="id")

# name -> (how the version is spoiled, spec it is saved with, what the error must say)
FAULTS = {
    "truncated weights": (_truncate, kit.SPEC, "checksum mismatch"),
    "checksum mismatch (a weight bit flipped)": (_flip_a_weight_bit, kit.SPEC, "checksum mismatch"),
    "width mismatch (feature spec 7, model 6)": (
        None,
        SEVEN,
        "the model takes 6 features, the records have 7",
    ),
    "width mismatch (config 7, weights 6)": (
        _config_width,
        kit.SPEC,
        "has shape (16, 6), the config expects (16, 7)",
    ),
    "pickle as weights (protocol 2)": (_pickle(2), kit.SPEC, "is a pickle, not safetensors"),
    "pickle as weights (protocol 0)": (_pickle(0), kit.SPEC, "not safetensors"),
    "torch.save zip as weights": (_torch_zip, kit.SPEC, "zip archive (torch.save)"),
}


def publish_faulty(root: str, trained, fault: str, plant: Path) -> str:
    spoil, spec, _ = FAULTS[fault]

    def write(d: str) -> None:
        kit.publish_files(d, trained, spec=spec)
        if spoil is not None:
            spoil(Path(d), plant)

    return ModelRegistry(root).publish(write, check=False)  # a faulty copy, not our publish


@pytest.fixture
def plant(tmp_path) -> Path:
    """Where the planted pickles would create a file if anything unpickled them."""
    path = tmp_path / "PICKLE-RAN"
    yield path
    assert not path.exists(), "a planted pickle was executed"


def test_the_planted_pickles_are_live(tmp_path):
    """The payloads really run code when unpickled: their absence below means something."""
    import torch

    for protocol in (0, 2):
        canary = tmp_path / f"canary-{protocol}"
        pickle.loads(pickle.dumps(Plant(canary), protocol=protocol))
        assert canary.exists()
    canary = tmp_path / "canary-zip"
    torch.save({"w": Plant(canary)}, tmp_path / "zip")
    torch.load(tmp_path / "zip", weights_only=False)
    assert canary.exists()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_watcher_refuses_a_faulty_version_and_keeps_serving(
    fault, model_root, trained, plant, caplog
):
    caplog.set_level(logging.ERROR, logger="ae_pipeline.serving")
    root, good = model_root
    watcher = ModelWatcher(root, interval_s=0, device="cpu")
    assert watcher.current().version == good
    bad = publish_faulty(root, trained, fault, plant)

    model = watcher.current()
    assert model.version == good
    assert FAULTS[fault][2] in watcher.failed[bad]
    logged = [r.getMessage() for r in caplog.records if bad in r.getMessage()]
    assert logged and f"still serving {good}" in logged[0] and FAULTS[fault][2] in logged[0]
    results, dead = model.score_records(kit.stream_values(0, 50), "flag")
    assert len(results) + len(dead) == 50
    assert {r["model_version"] for r in results} == {good}
    # Refused once, not retried on every poll; a later good version is still picked up.
    assert watcher.current().version == good and len(caplog.records) == len(logged)
    newer = kit.publish(root, trained)
    assert watcher.current().version == newer


def test_version_published_while_scoring(model_root, trained):
    """Two threads score continuously while a version is written slowly: until its marker
    exists nobody sees it (nor tries to load it); then every thread swaps to it, and every
    batch is scored whole by one version."""
    root, first = model_root
    watcher = ModelWatcher(root, interval_s=0, device="cpu")
    batch = kit.stream_values(0, 40)
    half_written, finish_writing = threading.Event(), threading.Event()
    stop = threading.Event()
    seen: dict[str, list[str]] = defaultdict(list)
    errors: list[BaseException] = []
    counts = {"in": 0, "out": 0}
    lock = threading.Lock()

    def score(name: str) -> None:
        try:
            while not stop.is_set():
                model = watcher.current()
                results, dead = model.score_records(batch, "flag")
                versions = {r["model_version"] for r in results} | {
                    d["model_version"] for d in dead
                }
                assert versions == {model.version}
                seen[name].append(model.version)
                with lock:
                    counts["in"] += len(batch)
                    counts["out"] += len(results) + len(dead)
        except BaseException as err:
            errors.append(err)

    def write(d: str) -> None:
        kit.publish_files(d, trained)
        half_written.set()
        assert finish_writing.wait(60)

    threads = [threading.Thread(target=score, args=(f"t{i}",), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    publisher = threading.Thread(
        target=lambda: seen["published"].append(ModelRegistry(root).publish(write)), daemon=True
    )
    publisher.start()
    try:
        assert half_written.wait(60)
        kit.wait_until(lambda: all(len(seen[f"t{i}"]) >= 20 for i in range(2)), "scoring")
        # The files are all there, the marker is not: the version is invisible.
        assert watcher.current().version == first and not watcher.failed
        finish_writing.set()
        publisher.join(60)
        second = seen["published"][0]
        kit.wait_until(
            lambda: all(seen[f"t{i}"][-1] == second for i in range(2)), "both threads to swap"
        )
    finally:
        finish_writing.set()
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    for i in range(2):
        versions = seen[f"t{i}"]
        swap = versions.index(second)
        assert set(versions[:swap]) == {first} and set(versions[swap:]) == {second}
    assert counts["in"] == counts["out"]
    rel.report_fault(
        "version published while scoring",
        "ModelWatcher, 2 scoring threads",
        records_in=counts["in"],
        records_out=counts["out"],
        duplicated=0,
        lost=counts["in"] - counts["out"],
    )


@pytest.mark.kafka
@pytest.mark.parametrize("scoring_process", [False, True], ids=["inline", "scoring-process"])
def test_consumer_keeps_serving_through_model_faults(
    broker, model_root, trained, plant, caplog, scoring_process
):
    """The consumer follows the model root (registry polled before every batch); each faulty
    version is refused and the records produced after it are scored by the previous version;
    then a good version published mid-stream takes over without a gap or a duplicate. Inline,
    and with the scoring process (which loads the versions itself; its log records are emitted
    here, through this process's loggers)."""
    caplog.set_level(logging.ERROR, logger="ae_pipeline.serving")

    def refusals_of(version: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if version in r.getMessage()]

    root, good = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap)
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        mode="flag",
        model_root=root,
        model_poll_interval_s=0,
        device="cpu",
        max_batch=100,
        scoring_process=scoring_process,
    )
    thread = rel.ConsumerThread(consumer)
    thread.start()
    produced = 0

    def phase(name: str, before=None) -> rel.Tally:
        nonlocal produced
        if before is not None:
            before()
        coords = kit.produce(bootstrap, inp, kit.stream_values(produced, 150), start_key=produced)
        produced += 150
        kit.wait_until(
            lambda: kit.total(bootstrap, out, dlq) >= produced, name, alive=thread.problem
        )
        t = rel.tally(bootstrap, inp, out, dlq, only=coords)
        rel.report_fault(name, "plain consumer (hot reload)", t, served=dict(t.versions))
        assert t.lost == 0 and t.duplicated == 0 and t.records_in == 150
        return t

    try:
        assert set(phase("no fault (baseline)").versions) == {good}
        for fault in FAULTS:
            bad: list[str] = []
            t = phase(
                fault, lambda f=fault, b=bad: b.append(publish_faulty(root, trained, f, plant))
            )
            assert set(t.versions) == {good}, f"{fault}: served by {t.versions}"
            refusals = refusals_of(bad[0])
            assert len(refusals) == 1 and FAULTS[fault][2] in refusals[0], refusals

        # A good version published while records stream in.
        earlier = {(tp.partition, o) for tp, n in _ends(bootstrap, inp).items() for o in range(n)}
        feeder = rel.Feeder(bootstrap, inp, rate=250, start=produced)
        feeder.start()
        try:
            kit.wait_until(
                lambda: kit.total(bootstrap, out, dlq) >= produced + 200,
                "streaming outputs",
                alive=thread.problem,
            )
            newer = kit.publish(root, trained)
            kit.wait_until(
                lambda: consumer.stats.model_version == newer, "the swap", alive=thread.problem
            )
            swapped_at = feeder.sent
            kit.wait_until(lambda: feeder.sent >= swapped_at + 200, "records after the swap")
        finally:
            sent = feeder.finish()
        kit.wait_until(
            lambda: kit.total(bootstrap, out, dlq) >= sent, "the rest", alive=thread.problem
        )
    finally:
        thread.finish()
    streamed = {(tp.partition, o) for tp, n in _ends(bootstrap, inp).items() for o in range(n)}
    streamed -= earlier
    t = rel.tally(bootstrap, inp, out, dlq, only=streamed)
    rel.report_fault(
        "good version published mid-stream",
        "plain consumer (hot reload)",
        t,
        served=dict(t.versions),
    )
    assert t.lost == 0 and t.duplicated == 0 and t.records_in == sent - produced
    assert set(t.versions) == {good, newer}
    # In each partition, every record before the swap point was scored by the old version and
    # every one after it by the new one (batches are scored whole, in offset order).
    by_partition = defaultdict(list)
    for d in kit.read_all(bootstrap, out) + kit.read_all(bootstrap, dlq):
        if (d["partition"], d["offset"]) in streamed:
            by_partition[d["partition"]].append((d["offset"], d["model_version"]))
    for outputs in by_partition.values():
        versions = [v for _, v in sorted(outputs)]
        assert versions == sorted(versions, key=[good, newer].index)


def _ends(bootstrap: str, topic: str) -> dict:
    from ae_pipeline.kafka import end_offsets

    return end_offsets({"bootstrap.servers": bootstrap}, topic)
