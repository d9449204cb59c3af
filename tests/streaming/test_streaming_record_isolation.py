"""No record can stop the scoring path (no servers): per-record isolation, bounded dead letters,
message keys, passthrough collisions, and the consumer's option checks.

The same hostile corpus runs through the real broker in
``tests/reliability/test_reliability_hostile_records.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter

import kit
import numpy as np
import pytest
from kit.hostile import PASSTHROUGH, RESULT, hostile_records

from ae_pipeline.consumer import ScoringConsumer, check_run_args
from ae_pipeline.features import INTERNAL, REASONS, TOO_LARGE, decode_records
from ae_pipeline.serving import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ServingError,
    ServingModel,
    Source,
    check_passthrough,
    result_fields,
    to_messages,
)
from pipelines import consume


@pytest.fixture(scope="module")
def model(tmp_path_factory, trained):
    from ae_pipeline.registry import ModelRegistry

    root = str(tmp_path_factory.mktemp("isolation-models"))
    version = kit.publish(root, trained)
    return ServingModel.load(ModelRegistry(root).path(version), device="cpu", top_k=3)


def _size(message) -> int:
    key, value, headers = message
    return len(key or b"") + len(value) + sum(len(n) + len(v) for n, v in headers)


def _outcomes(scored) -> dict[int, str]:
    """``{offset: "result" or reason}`` of a ScoredMessages."""
    got: dict[int, str] = {}
    for _, value, _ in scored.results:
        got[json.loads(value)["offset"]] = RESULT
    for _, value, headers in scored.dead_letters:
        letter = json.loads(value)
        assert dict(headers)["reason"].decode() == letter["reason"]
        got[letter["offset"]] = letter["reason"]
    return got


@pytest.mark.parametrize("message_key", ["input", "record"])
def test_every_hostile_record_earns_a_result_or_a_dead_letter(model, message_key):
    corpus = list(hostile_records())
    sources = [Source("in", 0, i, h.key, 1) for i, h in enumerate(corpus)]
    values = [h.value for h in corpus]
    scored = model.score_messages(
        values, "flag", sources=sources, passthrough=PASSTHROUGH, message_key=message_key
    )
    outcomes = _outcomes(scored)
    assert len(scored.results) + len(scored.dead_letters) == len(corpus) == len(outcomes)
    wrong = {h.name: outcomes[i] for i, h in enumerate(corpus) if outcomes[i] not in h.expect}
    assert not wrong
    assert all(reason in REASONS for reason in scored.dead_reasons)
    assert max(map(_size, scored.results + scored.dead_letters)) <= DEFAULT_MAX_MESSAGE_BYTES
    # Dead letters are keyed by the input key whatever message_key says, and describe the
    # whole original even when they keep only its first bytes.
    for key, value, _ in scored.dead_letters:
        letter = json.loads(value)
        original = corpus[letter["offset"]]
        assert key == original.key
        if original.value is None:
            continue
        assert letter["value_length"] == len(original.value)
        assert letter["value_sha256"] == hashlib.sha256(original.value).hexdigest()
        kept = base64.b64decode(letter["value_b64"])
        assert original.value.startswith(kept)
        assert letter["value_truncated"] == (len(kept) < len(original.value))
    truncated = [json.loads(v).get("value_truncated") for _, v, _ in scored.dead_letters]
    assert truncated.count(True) >= 3  # the ~1 MB dead letters


def test_a_failing_batch_is_scored_record_by_record_and_only_then(model, monkeypatch, caplog):
    values = [kit.record(i, row) for i, row in enumerate(kit.normal_rows(6))]
    calls = Counter()
    real = ServingModel._score_batch

    def score_batch(self, values, sources, mode, passthrough):
        calls[len(values)] += 1
        if any(b'"id": 3,' in v for v in values):
            raise RuntimeError("boom")
        return real(self, values, sources, mode, passthrough)

    monkeypatch.setattr(ServingModel, "_score_batch", score_batch)
    good = [v for v in values if b'"id": 3,' not in v]
    results, dead = model.score_records(good, "flag")
    assert calls == {5: 1} and len(results) == 5 and not dead  # no fallback without a failure

    calls.clear()
    with caplog.at_level("WARNING", logger="ae_pipeline.serving"):
        results, dead = model.score_records(values, "encode")
    assert calls == {6: 1, 1: 6}
    assert [r["key"] for r in results] == [0, 1, 2, 4, 5]
    assert [(d["reason"], d["detail"]) for d in dead] == [(INTERNAL, "RuntimeError: boom")]
    assert base64.b64decode(dead[0]["value_b64"]) == values[3]
    assert "scored record by record, 1 dead-lettered" in caplog.text


def test_a_model_fault_is_not_dead_lettered(tmp_path):
    from ae_pipeline.artifact import save_artifact
    from ae_pipeline.models import ModelConfig, build_model

    cfg = ModelConfig(2, hidden_dims=[], latent_dim=1)
    path = save_artifact(
        str(tmp_path / "v"), build_model(cfg, seed=0), cfg, feature_columns=["a", "b"]
    )
    uncalibrated = ServingModel.load(path, device="cpu")
    with pytest.raises(ServingError, match="no calibrated threshold"):
        uncalibrated.score_messages([b'{"a": 1, "b": 2}', b"[" * 2000], "flag")


def test_deep_json_is_bad_json_on_every_decoding_path():
    spec = kit.SPEC
    good = kit.record(1, kit.normal_rows(1)[0])
    deep = b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b", " + good[1:]
    for fields in (None, (), ("x",), ("f0",)):  # checked path, typed path, dict paths
        batch = decode_records([good, deep, good], spec, fields=fields)
        assert batch.index == [0, 2]
        assert [(e.index, e.reason) for e in batch.errors] == [(1, "bad_json")]


def test_dead_letters_are_cut_to_the_limit_keeping_length_and_hash(model):
    poison = b"{" + bytes(range(256)) * 1000  # 256 kB of bad JSON
    source = Source("in", 2, 9, b"key-9", 5)
    scored = model.score_messages([poison], "flag", sources=[source], max_message_bytes=20_000)
    (message,) = scored.dead_letters
    assert _size(message) <= 20_000 and message[0] == b"key-9"
    letter = json.loads(message[1])
    kept = base64.b64decode(letter["value_b64"])
    assert 10_000 < len(kept) < 15_000 and poison.startswith(kept)
    assert letter["value_truncated"] is True and letter["value_length"] == len(poison)
    assert letter["value_sha256"] == hashlib.sha256(poison).hexdigest()
    assert (letter["reason"], letter["partition"], letter["offset"]) == ("bad_json", 2, 9)
    # Below the limit, the whole original.
    small = model.score_messages([b"{oops"], "flag", sources=[source]).dead_letters[0]
    assert json.loads(small[1])["value_truncated"] is False


def test_a_result_over_the_limit_becomes_a_too_large_dead_letter(model):
    rows = kit.normal_rows(3)
    values = [
        json.dumps(
            {"note": "n" * size, "id": i, **dict(zip(kit.COLUMNS, map(float, r), strict=True))}
        ).encode()
        for i, (r, size) in enumerate(zip(rows, [10, 50_000, 10], strict=True))
    ]
    sources = [Source("in", 0, i, b"k%d" % i, 5) for i in range(3)]
    scored = model.score_messages(
        values, "flag", sources=sources, passthrough=["note"], max_message_bytes=30_000
    )
    assert [json.loads(v)["offset"] for _, v, _ in scored.results] == [0, 2]
    assert scored.dead_reasons == [TOO_LARGE]
    key, value, headers = scored.dead_letters[0]
    letter = json.loads(value)
    assert key == b"k1" and dict(headers)["reason"] == b"too_large"
    assert "more than max_message_bytes=30000" in letter["detail"]
    assert letter["value_truncated"] and letter["value_length"] == len(values[1])
    assert _size(scored.dead_letters[0]) <= 30_000


def test_result_message_keys_are_the_input_keys_by_default(model):
    rows = kit.normal_rows(3)
    values = [kit.record(7 + i, r) for i, r in enumerate(rows)]
    sources = [Source("in", 0, 0, b"\xff\x00raw", 5), Source("in", 0, 1, None, 5), None]
    scored = model.score_messages([*values, b"oops"], "flag", sources=[*sources, sources[0]])
    # The input key as it was (bytes that are no UTF-8 too); none where the input had none; a
    # record without a Kafka source: its key field. The record's id stays in the body.
    assert [m[0] for m in scored.results] == [b"\xff\x00raw", None, b"9"]
    assert [json.loads(m[1])["key"] for m in scored.results] == [7, 8, 9]
    assert [m[0] for m in scored.dead_letters] == [b"\xff\x00raw"]
    by_record = model.score_messages(values, "flag", sources=sources, message_key="record")
    assert [m[0] for m in by_record.results] == [b"7", b"8", b"9"]
    with pytest.raises(ServingError, match="message_key"):
        model.score_messages(values, "flag", message_key="id")


def test_to_messages_never_raises_because_of_one_output():
    deep: list = []
    for _ in range(2000):
        deep = [deep]
    outputs = [
        {"key": 1, "model_version": "v", "score": 0.5},
        {"key": "\ud800", "model_version": "v", "offset": 4},  # no UTF-8 form for the key
        {"key": 2, "model_version": "v", "note": deep},  # too deep for both JSON writers
        {"key": 3, "model_version": "v", "big": 2**70},  # beyond orjson's 64-bit integers
        {"key": 4, "model_version": "v", "note": "x" * 10_000},  # over the limit below
        {"key": 5, "model_version": "v", "reason": "bad_json", "value_b64": "QQ==" * 5000},
    ]
    messages = to_messages(outputs, max_message_bytes=8192)
    assert len(messages) == len(outputs)
    reasons = [dict(h).get("reason") for _, _, h in messages]
    assert reasons == [None, b"internal", b"internal", None, b"too_large", b"bad_json"]
    assert json.loads(messages[1][1])["offset"] == 4
    assert "UnicodeEncodeError" in json.loads(messages[1][1])["detail"]
    assert json.loads(messages[3][1])["big"] == 2**70
    assert json.loads(messages[5][1])["value_truncated"] is True
    assert max(map(_size, messages)) <= 8192


@pytest.mark.parametrize("mode", ["encode", "denoise", "flag"])
def test_passthrough_fields_may_not_collide_with_result_fields(model, mode):
    for name in result_fields(mode):
        with pytest.raises(ServingError, match=f"passthrough field '{name}'"):
            check_passthrough(["site", name], mode)
        with pytest.raises(ServingError, match=f"passthrough field '{name}'"):
            model.score_records([kit.record(0, kit.normal_rows(1)[0])], mode, passthrough=[name])
    assert check_passthrough(["site", "id", "f0"], mode) == ("site", "id", "f0")
    with pytest.raises(ServingError, match="given twice"):
        check_passthrough(["site", "site"], mode)
    assert {"topic", "partition", "offset", "key", "model_version"} <= set(result_fields(mode))


def test_anomaly_scores_isolate_a_failing_record(model, monkeypatch):
    values = [kit.record(i, row) for i, row in enumerate(kit.normal_rows(4))]
    real = ServingModel._anomaly_scores

    def scores(self, batch):
        if any(b'"id": 2,' in v for v in batch):
            raise MemoryError("no room")
        return real(self, batch)

    monkeypatch.setattr(ServingModel, "_anomaly_scores", scores)
    got, reasons = model.anomaly_scores(values)
    assert np.isfinite(got[[0, 1, 3]]).all() and np.isnan(got[2])
    assert reasons == {2: "internal: MemoryError: no room"}


# ---------------------------------------------------------------------------- the consumer


def _consumer(**kwargs) -> ScoringConsumer:
    config = {"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}
    return ScoringConsumer(
        config, input_topic="i", output_topic="o", dead_letter_topic="d",
        model_version_dir="/nowhere", scoring_process=False, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("poll_timeout_s", -1, "poll_timeout_s must be greater than 0"),
        ("poll_timeout_s", float("nan"), "poll_timeout_s must be a number"),
        ("top_k", -3, "top_k must be 0 or more"),
        ("torch_threads", -2, "torch_threads must be 0 or more"),
        ("max_batch", 0, "max_batch must be greater than 0"),
        ("flush_timeout_s", 0, "flush_timeout_s must be greater than 0"),
        ("wait_for_model_s", -5, "wait_for_model_s must be 0 or more"),
        ("model_poll_interval_s", float("inf"), "must be finite"),
        ("passthrough", ("offset",), "passthrough field 'offset'"),
        ("max_message_bytes", 100, "max_message_bytes must be at least"),
        ("message_key", "id", "message_key 'id' is not one of"),
        ("processing_guarantee", "exactly-once", "processing_guarantee must be one of"),
        ("transactional_id", "scorer-0", "only used with processing_guarantee='exactly_once'"),
        ("transaction_timeout_s", 0, "transaction_timeout_s must be greater than 0"),
        ("commit_interval_s", -0.1, "commit_interval_s must be 0 or more"),
        ("commit_interval_s", float("inf"), "commit_interval_s must be finite"),
        ("commit_interval_s", 10.0, r"commit_interval_s \(10\) must be less than"),
    ],
)
def test_consumer_refuses_options_that_cannot_work(option, value, says):
    with pytest.raises(ValueError, match=says):
        _consumer(**{option: value})


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--poll_timeout_s=-1"], "poll_timeout_s must be greater than 0"),
        (["--top_k=-3"], "--top_k must be 0 or more"),
        (["--torch_threads=-2"], "--torch_threads must be 0 or more"),
        (["--max_batch=0"], "max_batch must be greater than 0"),
        (["--idle_timeout_s=-1"], "idle_timeout_s must be 0 or more"),
        (["--max_records=0"], "max_records must be a whole number of 1 or more"),
        (["--passthrough=site,partition"], "passthrough field 'partition'"),
        (["--max_message_bytes=10"], "max_message_bytes must be at least"),
        (["--transactional_id=scorer-0"], "only used with processing_guarantee"),
        (
            ["--processing_guarantee=exactly_once", "--transaction_timeout_s=-1"],
            "transaction_timeout_s must be greater than 0",
        ),
        (
            ["--processing_guarantee=exactly_once", "--commit_interval_s=20"],
            "must be less than transaction_timeout_s",
        ),
    ],
)
def test_consume_cli_refuses_bad_options_in_one_line_with_exit_code_2(capsys, args, says):
    base = [
        "--bootstrap_servers=127.0.0.1:1", "--group_id=g", "--input_topic=i",
        "--output_topic=o", "--dead_letter_topic=d", "--model_version_dir=/nowhere",
    ]  # fmt: skip
    assert consume.main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_run_arguments_are_checked():
    check_run_args(None, None)
    check_run_args(1, 0)
    for bad in [(0, None), (None, -1), (None, float("nan")), (2.5, None)]:
        with pytest.raises(ValueError):
            check_run_args(*bad)
