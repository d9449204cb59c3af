"""Encode / Denoise / FlagAnomalies and the RunInference model handler on the FnApiRunner."""

from __future__ import annotations

import json
import typing

import apache_beam as beam
import kit
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelMetadata, RunInference
from apache_beam.testing.util import assert_that, equal_to

from ae_pipeline.beam.model_handler import AutoencoderModelHandler
from ae_pipeline.beam.transforms import NAMESPACE, Denoise, Encode, FlagAnomalies
from ae_pipeline.kafka import KafkaRecord
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.serving import ServingModel


def _counters(result) -> dict[str, int]:
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for c in found:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + c.committed
    return totals


def test_flag_anomalies_accounts_for_every_record_of_every_kind(beam_options, model_root, trained):
    values, n_poison = kit.records_with_poison(300, anomalies=10)
    rows = kit.normal_rows(3, seed=9)
    as_dict = {"id": 1000, **dict(zip(kit.COLUMNS, map(float, rows[0]), strict=True))}
    mixed = [
        *values,
        as_dict,
        beam.Row(**{**as_dict, "id": 1001}),
        KafkaRecord("in", 2, 77, 1_700_000_000_000, b"kr", kit.record(1002, rows[1])),
        (b"tk", kit.record(1003, rows[2])),
        KafkaRecord("in", 2, 78, -1, b"bad", b"\xff\xfe"),
    ]
    expected_good = 300 + 4
    model = ServingModel.load(ModelRegistry(model_root).path(ModelRegistry(model_root).latest()))
    offline, _ = model.score_records(mixed, "flag")
    expected_flags = sorted((r["key"], r["is_anomaly"]) for r in offline)

    p = beam.Pipeline(options=beam_options("fnapi"))
    out = (
        p
        | beam.Create(mixed, reshuffle=False)
        | FlagAnomalies(model_root=model_root, device="cpu", max_batch_size=64)
    )
    results, dead = out
    assert_that(
        results | beam.Map(lambda r: (r["key"], r["is_anomaly"])),
        equal_to(expected_flags),
        label="flags equal the offline scores",
    )
    assert_that(
        dead | beam.Map(lambda d: d["reason"]),
        equal_to([*kit.POISON, "bad_json"]),
        label="poison is dead-lettered with its reason",
    )
    assert_that(
        dead
        | beam.Filter(lambda d: "offset" in d)
        | beam.Map(lambda d: (d["partition"], d["offset"])),
        equal_to([(2, 78)]),
        label="dead letters keep Kafka coordinates",
    )
    result = p.run()
    result.wait_until_finish()
    counts = _counters(result)
    assert counts["records_in"] == len(mixed) == expected_good + n_poison + 1
    assert counts["results"] == expected_good
    assert counts["dead_letters"] == n_poison + 1
    assert counts["dead_letters_bad_json"] == 2 and counts["dead_letters_missing_field"] == 1
    assert counts["anomalies"] == sum(f for _, f in expected_flags) >= 10


def test_encode_and_denoise_take_per_poll_lists_and_a_fixed_version(
    beam_options, version_dir, trained
):
    x = kit.normal_rows(40, seed=4)
    polls = [
        [KafkaRecord("t", 0, i, -1, None, kit.record(i, x[i])) for i in range(j, j + 10)]
        for j in range(0, 40, 10)
    ]
    polls[1].append(KafkaRecord("t", 0, 99, -1, None, b"not json"))
    version = version_dir.rsplit("/", 1)[1]
    latent = (
        trained.model.encode(__import__("torch").from_numpy(trained.scaler.transform(x)))
        .detach()
        .numpy()
    )
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        polled = p | beam.Create(polls, reshuffle=False)
        enc = polled | "E" >> Encode(model_version_dir=version_dir, device="cpu", prebatched=True)
        den = polled | "D" >> Denoise(model_version_dir=version_dir, device="cpu", prebatched=True)
        assert_that(
            enc.results | beam.Map(lambda r: (r["offset"], r["latent"])),
            _close_to({i: latent[i] for i in range(40)}),
            label="latent codes",
        )
        assert_that(
            enc.results | "V" >> beam.Map(lambda r: r["model_version"]),
            equal_to([version] * 40),
            label="model version",
        )
        assert_that(
            den.results
            | beam.Map(lambda r: abs(r["reconstruction"]["f4"] - x[r["offset"], 4]) < 30),
            equal_to([True] * 40),
            label="reconstruction in original units",
        )
        assert_that(enc.dead_letters | beam.Map(lambda d: d["offset"]), equal_to([99]), label="dl")


def test_batching_in_the_global_window_and_in_fixed_windows(beam_options, version_dir):
    """Global window: batched within bundles (at most ``max_batch_size``), here with one list
    of results per batch. Fixed windows: ``BatchElements`` batches per window, and every
    result stays in its record's window. Either way: every record, once."""
    from apache_beam.transforms import window

    values, n_poison = kit.records_with_poison(200)
    model = ServingModel.load(version_dir)
    expected = sorted(r["key"] for r in model.score_records(values, "flag")[0])
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        records = p | beam.Create(values, reshuffle=False)
        lists = records | "Global" >> FlagAnomalies(
            model_version_dir=version_dir, device="cpu", max_batch_size=32, emit_batches=True
        )
        assert_that(
            lists.results | beam.Map(len) | "Max" >> beam.CombineGlobally(max),
            lambda sizes: sizes[0] <= 32 or pytest.fail(f"a batch of {sizes[0]} > 32"),
            label="batches of at most max_batch_size",
        )
        assert_that(
            lists.results | beam.FlatMap(lambda rs: [r["key"] for r in rs]),
            equal_to(expected),
            label="every record once, in lists",
        )
        assert_that(
            lists.dead_letters | beam.FlatMap(lambda ds: [d["reason"] for d in ds]),
            equal_to(list(kit.POISON)),
            label="dead letters in lists",
        )
        stamped = records | beam.Map(
            lambda v: (
                window.TimestampedValue(v, 1000 + 10 * (json.loads(v).get("id", 0) % 2))
                if v.startswith(b'{"id": ') and json.loads(v).get("id", -1) >= 0
                else window.TimestampedValue(v, 1000)
            )
        )
        windowed = (
            stamped
            | beam.WindowInto(window.FixedWindows(10))
            | "Windowed"
            >> (FlagAnomalies(model_version_dir=version_dir, device="cpu", max_batch_size=32))
        )
        assert_that(
            windowed.results
            | beam.Map(lambda r, w=beam.DoFn.WindowParam: (r["key"] % 2, int(w.start)))
            | beam.Distinct(),
            equal_to([(0, 1000), (1, 1010)]),
            label="results stay in their record's window",
        )
        assert_that(
            windowed.results | "Keys" >> beam.Map(lambda r: r["key"]),
            equal_to(expected),
            label="every record once, windowed",
        )
    assert n_poison == len(kit.POISON)


def test_a_model_that_does_not_fit_the_records_fails_at_load(beam_options, version_dir):
    p = beam.Pipeline(options=beam_options("fnapi"))
    _ = (
        p
        | beam.Create([b"{}"])
        | FlagAnomalies(model_version_dir=version_dir, spec={"columns": ["f0", "f1"]})
    )
    with pytest.raises(Exception, match="records have 2"):
        p.run().wait_until_finish()


def _close_to(expected: dict, atol: float = 1e-4):
    """A matcher: ``(id, vector)`` pairs equal to ``expected[id]`` within ``atol``."""

    def check(actual):
        got = dict(actual)
        assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
        for k, v in got.items():
            np.testing.assert_allclose(v, expected[k], atol=atol)

    return check


# ------------------------------------------------------------------------ model handler


def test_model_handler_scores_blocks_with_run_inference(beam_options, version_dir, trained):
    blocks = [kit.normal_rows(n, seed=n) for n in (5, 7, 1)]
    blocks.append(kit.normal_rows(1, seed=99)[0])  # a single vector
    handler = AutoencoderModelHandler(version_dir, mode="flag", device="cpu", max_batch_size=3)
    version = version_dir.rsplit("/", 1)[1]
    model = handler.load_model()
    expected = [model.score_matrix(b, "flag")["score"].round(6).tolist() for b in blocks]
    expected[-1] = expected[-1][0]
    assert handler.get_num_bytes(blocks) == sum(b.nbytes for b in blocks)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 3}
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        preds = p | beam.Create(blocks, reshuffle=False) | RunInference(handler)
        assert_that(
            preds
            | beam.Map(
                lambda r: (
                    r.model_id,
                    np.round(r.inference["score"], 6).tolist(),
                    r.inference["contributions"].shape,
                )
            ),
            equal_to(
                [
                    (version, e, (*np.shape(b)[:-1], 6) if np.ndim(b) == 2 else (6,))
                    for e, b in zip(expected, blocks, strict=True)
                ]
            ),
        )


def test_model_handler_follows_the_model_update_side_input(beam_options, model_root, trained):
    registry = ModelRegistry(model_root)
    first = registry.latest()
    second = kit.publish(model_root, trained)
    handler = AutoencoderModelHandler(registry.path(first), mode="encode", device="cpu")
    marker = f"{registry.path(second)}/_PUBLISHED"
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        meta = p | "Meta" >> beam.Create([ModelMetadata(model_id=marker, model_name=second)])
        preds = (
            p | beam.Create([kit.normal_rows(4)]) | RunInference(handler, model_metadata_pcoll=meta)
        )
        assert_that(
            preds | beam.Map(lambda r: (r.model_id, r.inference.shape)),
            equal_to([(second, (4, 2))]),
        )


def test_model_handler_update_path_keeps_the_old_version_when_the_new_one_is_bad(
    model_root, trained, tmp_path
):
    registry = ModelRegistry(model_root)
    first = registry.path(registry.latest())
    handler = AutoencoderModelHandler(f"{first}/_PUBLISHED", device="cpu")
    assert handler.model_path == first
    handler.update_model_path("")  # WatchFilePattern before any new version: no change
    assert handler.model_path == first

    bad = kit.publish(model_root, trained)  # then corrupted (publishing refuses a bad one)
    with open(f"{registry.path(bad)}/config.json", "a") as f:
        f.write(" ")
    handler.update_model_path(f"{registry.path(bad)}/_PUBLISHED")
    assert handler.model_path == first
    assert handler.load_model().version == registry.versions()[0]
    good = kit.publish(model_root, trained)
    handler.update_model_path(f"{registry.path(good)}/_PUBLISHED")
    assert handler.load_model().version == good
    assert json.loads(json.dumps(repr(handler)))


@pytest.mark.parametrize("prebatched", [False, True])
def test_scoring_dofns_raise_no_beam_warnings_about_their_process_methods(
    caplog, version_dir, prebatched
):
    """Beam reads a DoFn's source and warns about ``return None`` lines and about generators
    with early returns (apache/beam#22969): the scoring DoFns must give it no reason to."""
    caplog.set_level("WARNING", logger="apache_beam.transforms.core")
    p = beam.Pipeline()
    records = p | beam.Create([kit.record(0, kit.normal_rows(1)[0])])
    flag = FlagAnomalies(
        model_version_dir=version_dir, device="cpu", prebatched=prebatched, emit_batches=True
    )
    _ = records | "Flag" >> flag
    _ = records | "Flag each" >> FlagAnomalies(model_version_dir=version_dir, device="cpu")
    noise = [r.getMessage() for r in caplog.records if "process method" in r.getMessage()]
    assert not noise, noise


# ----------------------------------------------------- composing, and no record fails a bundle


class Unpackable:
    """An element the scoring path cannot even unpack: reading its ``value`` raises."""

    offset = 0

    @property
    def value(self):
        raise RuntimeError("this element cannot be read")


@pytest.mark.parametrize("typed", [True, False], ids=["list-typed", "lists-at-run-time"])
def test_lists_of_records_are_batches_without_a_flag(beam_options, version_dir, typed):
    """``ReadKafkaRecords(...) | FlagAnomalies(...)``: each poll (a list) is a batch of records,
    whether the element type says so or the lists only show up at run time."""
    x = kit.normal_rows(30, seed=5)
    polls = [
        [KafkaRecord("t", 0, i, -1, b"k%d" % i, kit.record(i, x[i])) for i in range(j, j + 10)]
        for j in range(0, 30, 10)
    ]
    polls[2].append(KafkaRecord("t", 0, 30, -1, None, b"not json"))
    p = beam.Pipeline(options=beam_options("fnapi"))
    created = p | beam.Create(polls, reshuffle=False)
    if not typed:
        created = created | beam.Map(lambda poll: poll).with_output_types(typing.Any)
    out = created | FlagAnomalies(model_version_dir=version_dir, device="cpu")
    assert_that(out.results | beam.Map(lambda r: r["offset"]), equal_to(list(range(30))))
    assert_that(
        out.dead_letters | beam.Map(lambda d: (d["offset"], d["reason"])),
        equal_to([(30, "bad_json")]),
        label="dead",
    )
    result = p.run()
    result.wait_until_finish()
    assert _counters(result)["records_in"] == 31


@pytest.mark.parametrize("as_messages", [False, True], ids=["dicts", "messages"])
def test_an_element_that_breaks_its_batch_is_dead_lettered_and_the_rest_scored(
    beam_options, version_dir, as_messages
):
    x = kit.normal_rows(20, seed=6)
    good = [KafkaRecord("t", 1, i, -1, b"k%d" % i, kit.record(i, x[i])) for i in range(20)]
    elements = [*good[:10], Unpackable(), *good[10:]]
    p = beam.Pipeline(options=beam_options("fnapi"))
    out = (
        p
        | beam.Create([elements], reshuffle=False)
        | FlagAnomalies(model_version_dir=version_dir, device="cpu", as_messages=as_messages)
    )
    if as_messages:
        results = out.results | beam.Map(lambda m: json.loads(m[1])["offset"])
        dead = out.dead_letters | beam.Map(
            lambda m: (json.loads(m[1]), dict(m[2])["reason"].decode())
        )
        dead = dead | beam.MapTuple(lambda d, header: (d["reason"], header, d["detail"]))
    else:
        results = out.results | beam.Map(lambda r: r["offset"])
        dead = out.dead_letters | beam.Map(lambda d: (d["reason"], d["reason"], d["detail"]))
    assert_that(results, equal_to(list(range(20))))
    assert_that(
        dead,
        equal_to([("internal", "internal", "RuntimeError: this element cannot be read")]),
        label="dead",
    )
    result = p.run()
    result.wait_until_finish()
    counts = _counters(result)
    assert counts["batch_fallbacks"] == 1 and counts["dead_letters_internal"] == 1
    assert counts["records_in"] == 21 and counts["results"] == 20


def test_a_failure_that_is_not_the_records_fault_fails_the_bundle(beam_options, tmp_path):
    """No model under the root: nothing is scored, nothing is dead-lettered, the run fails."""
    p = beam.Pipeline(options=beam_options("fnapi"))
    _ = (
        p
        | beam.Create([kit.record(0, kit.normal_rows(1)[0])])
        | FlagAnomalies(model_root=str(tmp_path / "empty"), device="cpu")
    )
    with pytest.raises(Exception, match="no loadable model version"):
        p.run().wait_until_finish()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": -3}, "top_k"),
        ({"torch_threads": -2}, "torch_threads"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"passthrough": ["offset"]}, "offset"),
        ({"as_messages": True, "max_message_bytes": 10}, "max_message_bytes"),
        ({"as_messages": True, "message_key": "nope"}, "message_key"),
    ],
)
def test_arguments_out_of_range_are_refused_at_construction(version_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlagAnomalies(model_version_dir=version_dir, **kwargs)


def test_refused_versions_are_counted_and_the_good_one_serves(beam_options, model_root, trained):
    registry = ModelRegistry(model_root)
    good = registry.latest()
    bad = kit.publish(model_root, trained)  # newer, then corrupted
    with open(f"{registry.path(bad)}/config.json", "a") as f:
        f.write(" ")
    p = beam.Pipeline(options=beam_options("fnapi"))
    out = (
        p
        | beam.Create([kit.record(i, r) for i, r in enumerate(kit.normal_rows(5, seed=2))])
        | FlagAnomalies(model_root=model_root, device="cpu")
    )
    assert_that(out.results | beam.Map(lambda r: r["model_version"]), equal_to([good] * 5))
    result = p.run()
    result.wait_until_finish()
    refused = {k: v for k, v in _counters(result).items() if k.startswith("refused_versions_")}
    assert sum(refused.values()) >= 1, refused


def test_following_a_root_swaps_while_no_record_arrives(model_root, trained, caplog):
    """The scoring DoFns' model watcher polls in the background: a quiet topic still gets the
    new version (logged), not only once the next record comes."""
    from ae_pipeline.beam.transforms import ModelSource, ScoreBatchesFn

    fn = ScoreBatchesFn("flag", ModelSource(root=model_root, device="cpu", poll_interval_s=0.2))
    provider = fn._open()
    try:
        assert provider.background
        caplog.set_level("INFO", logger="ae_pipeline.hot_reload")
        newer = kit.publish(model_root, trained)
        kit.wait_until(lambda: provider.version == newer, "the swap", timeout_s=30)
        assert newer in caplog.text
    finally:
        provider.close()
