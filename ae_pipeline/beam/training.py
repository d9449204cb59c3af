"""Beam batch training: Parquet blocks in, a calibrated, published model version out.

:class:`TrainAutoencoder` composes the stages (each a Beam step, so runners parallelise what can
be parallel and persist what crosses stages):

1. ``ReadFeatureBlocks``: row groups read in parallel, bad rows to ``rejected``.
2. ``Split``: a deterministic train/validation split by key hash; each block is written to a
   shard file (``.npz``, loaded with ``allow_pickle=False``) under the temp location, so training
   streams the data from disk epoch after epoch: the dataset is never one Python list and may be
   larger than the worker's memory.
3. ``FitScaler``: per-feature statistics combined in parallel, then a standard/min-max scaler.
4. ``Train``: one worker trains the model from the shard stream (early stopping on the
   validation shards). A stacked model is trained layer by layer as successive Beam stages:
   train layer k, encode every shard with it in parallel, train layer k+1 on the codes, then
   fine-tune end to end.
5. ``Calibrate``: validation shards scored in parallel with the same
   :class:`~ae_pipeline.models.scoring.Scorer` the streaming side uses; threshold and histogram.
6. ``Publish``: a new version under the model root, visible only once complete
   (:class:`~ae_pipeline.registry.ModelRegistry`), or a refusal that says why: no version that
   cannot serve is published (no validation rows to calibrate on, no training rows, a
   ``max_val_loss_increase`` guard that cannot be checked, a worse validation loss).

Training follows a budget that fits the data (:func:`ae_pipeline.models.budget.plan_budget`):
by default at least ``min_steps=2000`` optimiser steps and a batch size of at most 1/8 of the
training rows, so that small data is not trained with a handful of steps; big data trains the
epochs asked for. The job's result carries a ``summary`` (epochs and steps per stage, best
epoch, early stop, rows, threshold and the false-positive rate it targets, warnings) that
:func:`~ae_pipeline.training.summarize` prints for people.

The settings (:class:`~ae_pipeline.training.TrainJob`), the typed records between the stages
(:class:`~ae_pipeline.training.TrainedModel`, :class:`~ae_pipeline.training.TrainedLayer`) and
the last step, :func:`~ae_pipeline.training.publish` (calibration, the "no worse model" gate,
artifact writing), live in :mod:`ae_pipeline.training`, without Beam.

Size (just over 500 lines): the stages of one composite transform and the shard files
they pass; everything without Beam is in :mod:`ae_pipeline.training`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import uuid
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ae_pipeline.beam.parquet import NAMESPACE, REJECTED, Block, ReadFeatureBlocks, validation_mask
from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler, fingerprint
from ae_pipeline.training import (
    SCORES,
    DataCounts,
    TrainedLayer,
    TrainedModel,
    TrainJob,
    finish_score_function,
    publish,
    train_dict,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------
# Shards: blocks on disk, streamed back for training
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path: str
    rows: int


def write_shard(path: str, x: np.ndarray, y: np.ndarray | None = None) -> Shard:
    buf = io.BytesIO()
    arrays = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    if y is not None:
        arrays["y"] = np.asarray(y, dtype=np.int64)
    np.savez(buf, **arrays)
    with FileSystems.create(path) as f:
        f.write(buf.getvalue())
    return Shard(path, len(x))


def read_shard(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    with FileSystems.open(path) as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        return data["x"], (data["y"] if "y" in data.files else None)


def shard_stream(
    shards: list[Shard], scaler: Scaler | None, *, labels: bool = False, seed: int | None = 0
):
    """A callable returning one epoch's chunks (shards in a fresh random order each epoch)."""
    ordered = sorted(shards, key=lambda s: s.path)
    epoch = [0]

    def chunks():
        rng = np.random.default_rng(None if seed is None else seed + epoch[0])
        epoch[0] += 1
        for i in rng.permutation(len(ordered)):
            x, y = read_shard(ordered[i].path)
            if scaler is not None:
                x = scaler.transform(x)
            yield (x, y) if labels else x

    return chunks


class _SplitAndWrite(beam.DoFn):
    TRAIN, VAL = "train", "val"

    def __init__(self, temp_dir: str, fraction: float):
        self.temp_dir, self.fraction = temp_dir, fraction
        self.train_rows = Metrics.counter(NAMESPACE, "rows_train")
        self.val_rows = Metrics.counter(NAMESPACE, "rows_validation")

    def process(self, block: Block):
        val = validation_mask(block, self.fraction)
        for name, mask, counter in (
            (self.TRAIN, ~val, self.train_rows),
            (self.VAL, val, self.val_rows),
        ):
            part = block.take(mask)
            if len(part):
                counter.inc(len(part))
                path = FileSystems.join(self.temp_dir, name, f"{uuid.uuid4().hex}.npz")
                shard = write_shard(path, part.x, part.labels)
                yield shard if name == self.TRAIN else beam.pvalue.TaggedOutput(self.VAL, shard)


class MergeStatsFn(beam.CombineFn):
    """Merges statistics that have ``merge`` (:class:`ColumnStats`, the score function's
    :class:`FeatureErrorStats` and :class:`LatentStats`); None when there are none."""

    @staticmethod
    def _merge(acc, stats):
        return stats if acc is None else acc.merge(stats)

    def create_accumulator(self):
        return None

    def add_input(self, acc, stats):
        return self._merge(acc, stats)

    def merge_accumulators(self, accs):
        out = None
        for acc in accs:
            if acc is not None:
                out = self._merge(out, acc)
        return out

    def extract_output(self, acc):
        return acc


class ColumnStatsFn(MergeStatsFn):
    """Mergeable per-feature statistics of :class:`Block` elements."""

    def add_input(self, acc, block: Block):
        return self._merge(acc, ColumnStats.of(block.x))


# ------------------------------------------------------------------------------------------
# Training steps (plain functions; the DoFns below call them)
# ------------------------------------------------------------------------------------------


def _configs(job: TrainJob, input_dim: int, stage: str = "train"):
    from ae_pipeline.models import ModelConfig, TrainConfig

    model_cfg = ModelConfig.from_dict({**job.model_config, "input_dim": input_dim})
    train_cfg = TrainConfig.from_dict(train_dict(job, stage))
    return model_cfg, train_cfg


def _history(history) -> dict:
    """A trainer History as JSON, with the per-epoch loss lists the report plots."""
    return {
        **history.to_dict(),
        "train_losses": history.train_losses,
        "val_losses": history.val_losses,
        "samples_per_s": history.samples_per_s,
    }


def _rows(shards: list[Shard]) -> int:
    return sum(s.rows for s in shards)


def _refusal(reason: str, train: list[Shard], val: list[Shard]) -> TrainedModel:
    """What a training step returns instead of a model when it cannot train."""
    return TrainedModel.refusal(reason, rows_train=_rows(train), rows_validation=_rows(val))


def _cannot_train(job: TrainJob, model_cfg, train: list[Shard], stats) -> str | None:
    """Why the data cannot train this model (None: it can)."""
    if not train or stats is None or stats.count == 0:
        return "no training rows left after the validation split and rejections"
    if model_cfg.loss == "bce" and job.scaler == "none":
        low, high = float(np.min(stats.min)), float(np.max(stats.max))
        if low < 0 or high > 1:
            return (
                f"loss 'bce' needs data in [0, 1], but the features range over "
                f"[{low:.6g}, {high:.6g}]: use --scaler minmax (or --loss mse)"
            )
    return None


def _save_temp_model(temp_dir: str, name: str, model, model_cfg, **meta) -> str:
    from ae_pipeline.artifact import save_artifact

    path = FileSystems.join(temp_dir, "models", f"{name}-{uuid.uuid4().hex[:8]}")
    FileSystems.mkdirs(path)
    save_artifact(path, model, model_cfg, **meta)
    return path


def _warm_start_weights(job: TrainJob, model_cfg):
    """State dict of the newest version when it has the same architecture, else None."""
    if not job.warm_start:
        return None
    from ae_pipeline.artifact import load_artifact
    from ae_pipeline.registry import ModelRegistry

    registry = ModelRegistry(job.model_root)
    latest = registry.latest()
    if latest is None:
        log.info("warm start: no published version under %s; training from scratch", job.model_root)
        return None
    current = load_artifact(registry.path(latest))
    if current.model_config.to_dict() != model_cfg.to_dict():
        log.warning("warm start: %s has another architecture; training from scratch", latest)
        return None
    log.info("warm start from %s", latest)
    return current.model.state_dict()


def train_single(
    job: TrainJob, train: list[Shard], val: list[Shard], stats: ColumnStats
) -> TrainedModel:
    """Train a (non-stacked) model from shard streams; returns the temp model path + history."""
    from ae_pipeline.models import Trainer, build_model
    from ae_pipeline.models.factory import load_weights

    if stats is None:
        return _refusal(
            "no training rows left after the validation split and rejections", train, val
        )
    model_cfg, train_cfg = _configs(job, len(stats.mean))
    reason = _cannot_train(job, model_cfg, train, stats)
    if reason:
        return _refusal(reason, train, val)
    scaler = Scaler.fit(job.scaler, stats)
    model = build_model(model_cfg, seed=train_cfg.seed)
    init = _warm_start_weights(job, model_cfg)
    if init is not None:
        load_weights(model, init)
    supervised = model_cfg.num_classes is not None
    history = Trainer(train_cfg).fit(
        model,
        shard_stream(train, scaler, labels=supervised, seed=train_cfg.seed),
        val=shard_stream(val, scaler, labels=supervised, seed=None) if val else None,
        n_rows=_rows(train),
    )
    path = _save_temp_model(job.temp_dir, "model", model, model_cfg)
    return TrainedModel(
        model_path=path,
        scaler=scaler.to_dict(),
        history=_history(history),
        warm_start=init is not None,
        rows_train=_rows(train),
        rows_validation=_rows(val),
    )


def train_stack_layer(
    job: TrainJob, index: int, shards: list[Shard], val: list[Shard], stats
) -> TrainedLayer:
    """Greedy pretraining of stacked layer ``index`` on the previous layer's code shards."""
    from ae_pipeline.models import layerwise

    rows = {"rows_train": _rows(shards), "rows_validation": _rows(val)}
    if stats is None:
        reason = "no training rows left after the validation split and rejections"
        return TrainedLayer(index, scaler_kind=job.scaler, refused=reason, **rows)
    model_cfg, train_cfg = _configs(job, len(stats.mean), "pretrain")
    reason = _cannot_train(job, model_cfg, shards, stats)
    if reason:
        return TrainedLayer(index, scaler_kind=job.scaler, refused=reason, **rows)
    scaler = Scaler.fit(job.scaler, stats) if index == 0 else None
    layer, history = layerwise.train_layer(
        model_cfg,
        index,
        shard_stream(shards, scaler, seed=train_cfg.seed),
        train_cfg,
        val=shard_stream(val, scaler, seed=None) if val else None,
        n_rows=_rows(shards),
    )
    path = _save_temp_model(job.temp_dir, f"layer{index}", layer, layer.config)
    return TrainedLayer(index, path, _history(history), job.scaler, **rows)


class _EncodeShard(beam.DoFn):
    """Encode one shard with a pretrained layer; write the codes as a new shard."""

    def __init__(self, temp_dir: str, index: int, first: bool):
        self.temp_dir, self.index, self.first = temp_dir, index, first

    def process(self, shard: Shard, layer: TrainedLayer, stats):
        from ae_pipeline.artifact import load_artifact
        from ae_pipeline.models import layerwise

        if layer.refused:
            return
        model = load_artifact(layer.model_path).model
        x, y = read_shard(shard.path)
        if self.first:
            x = Scaler.fit(layer.scaler_kind, stats).transform(x)
        codes = layerwise.encode_with_layer(model, x)
        name = f"codes{self.index}/{uuid.uuid4().hex}.npz"
        yield write_shard(FileSystems.join(self.temp_dir, name), codes, y)


def finetune_stack(job: TrainJob, layers: list[TrainedLayer], train, val, stats) -> TrainedModel:
    """Assemble the pretrained layers and fine-tune end to end (supervised with labels)."""
    from ae_pipeline.artifact import load_artifact
    from ae_pipeline.models import layerwise

    layers = sorted(layers, key=lambda d: d.layer)
    refused = [d for d in layers if d.refused]
    if refused or stats is None:
        reason = refused[0].refused if refused else "no training rows"
        return _refusal(f"layer {refused[0].layer if refused else 0}: {reason}", train, val)
    scaler = Scaler.fit(job.scaler, stats)
    model_cfg, train_cfg = _configs(job, len(stats.mean), "finetune")
    stack = layerwise.assemble_stack(model_cfg, [load_artifact(d.model_path).model for d in layers])
    supervised = model_cfg.num_classes is not None
    history = layerwise.fine_tune(
        stack,
        shard_stream(train, scaler, labels=supervised, seed=train_cfg.seed),
        train_cfg,
        val=shard_stream(val, scaler, labels=supervised, seed=None) if val else None,
        supervised=supervised,
        n_rows=_rows(train),
    )
    path = _save_temp_model(job.temp_dir, "stack", stack, model_cfg)
    return TrainedModel(
        model_path=path,
        scaler=scaler.to_dict(),
        history=_history(history),
        layers=[{"layer": d.layer, "history": d.history} for d in layers],
        warm_start=False,
        rows_train=_rows(train),
        rows_validation=_rows(val),
    )


class _ShardScoringFn(beam.DoFn):
    """Scores shards with the trained model, loaded once per DoFn instance (not per shard)."""

    def __init__(self):
        self._loaded: tuple[str, object] | None = None

    def scorer(self, shard: Shard, trained: TrainedModel):
        """The trained model's Scorer and the shard's scaled rows (None for a refused model)."""
        from ae_pipeline.artifact import load_artifact
        from ae_pipeline.models.scoring import Scorer

        if trained.refused:
            return None, None
        if self._loaded is None or self._loaded[0] != trained.model_path:
            self._loaded = (trained.model_path, Scorer(load_artifact(trained.model_path).model))
        x, _ = read_shard(shard.path)
        return self._loaded[1], Scaler.from_dict(trained.scaler).transform(x)


class _ScoreShard(_ShardScoringFn):
    """What calibrates the threshold, for one validation shard (the same Scorer as
    streaming): the reconstruction errors (``mse``), or the raw values of the score function's
    terms (an ``N x terms`` array; their medians finish the function)."""

    def process(self, shard: Shard, trained: TrainedModel, unfitted):
        scorer, x = self.scorer(shard, trained)
        if scorer is None:
            return
        if unfitted is None:
            yield scorer.errors(x)
        else:
            yield np.stack(scorer.term_values(unfitted, x), axis=1)


class _ScoreStatsShard(_ShardScoringFn):
    """The score function's statistics of one shard: the per-feature squared errors of a
    validation shard, or the latent moments of a training shard."""

    def __init__(self, part: str):
        super().__init__()
        self.part = part

    def process(self, shard: Shard, trained: TrainedModel):
        scorer, x = self.scorer(shard, trained)
        if scorer is None or not len(x):
            return
        yield scorer.feature_error_stats(x) if self.part == "val" else scorer.latent_stats(x)


def _fit_score_function(_, features, latent, terms):
    from ae_pipeline.models.score_function import ScoreFunction

    if features is None or ("latent" in terms and latent is None):
        return None  # a refused model or no validation rows: publishing says why
    return ScoreFunction.fit(features, latent, terms)


def _concat(arrays) -> np.ndarray:
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays) if arrays else np.empty(0, np.float32)


# ------------------------------------------------------------------------------------------
# The composite transform
# ------------------------------------------------------------------------------------------


class TrainAutoencoder(beam.PTransform):
    """Parquet location -> a published model version (see the module docstring).

    Args:
        location: Parquet file, glob or directory.
        spec: feature/key/label columns (empty columns: all numeric).
        job: training settings.
        block_rows: rows per block read from Parquet.

    Output: a dict of two PCollections: ``"result"``, one dict ``{"published": version or
    None, "refused": reason?, "metrics": {...}, "threshold": {...}, "summary": {...}}``, and
    ``"rejected"``, the rows the read rejected (``{"file", "row", "reason", "detail"}``).

    Example:
        >>> outputs = pipeline | TrainAutoencoder("data/", spec, job)  # doctest: +SKIP
        >>> outputs["result"] | beam.Map(print)  # doctest: +SKIP
    """

    RESULT = "result"
    REJECTED = REJECTED

    def __init__(self, location: str, spec: FeatureSpec, job: TrainJob, *, block_rows: int = 65536):
        super().__init__()
        self.read = ReadFeatureBlocks(location, spec, block_rows=block_rows)
        self.spec = self.read.resolved_spec
        from ae_pipeline.models import ModelConfig
        from ae_pipeline.models.sizing import sized

        # A model config without hidden_dims / latent_dim is sized from the data's width.
        self.job = dataclasses.replace(job, model_config=sized(job.model_config, self.spec.dim))
        # Fail before the pipeline runs when the options do not make a valid model.
        ModelConfig.from_dict({**self.job.model_config, "input_dim": self.spec.dim})

    def expand(self, pbegin):
        from ae_pipeline.models import ModelConfig
        from ae_pipeline.models.stacked import n_layers

        job, spec = self.job, self.spec
        read = pbegin | "Read" >> self.read
        rejected = read[REJECTED]
        blocks = read["blocks"]
        split = blocks | "Split" >> beam.ParDo(
            _SplitAndWrite(job.temp_dir, job.validation_fraction)
        ).with_outputs(_SplitAndWrite.VAL, main=_SplitAndWrite.TRAIN)
        train, val = split[_SplitAndWrite.TRAIN], split[_SplitAndWrite.VAL]
        stats = beam.pvalue.AsSingleton(
            blocks
            | "TrainRowsOnly"
            >> beam.Map(lambda b, f: b.take(~validation_mask(b, f)), job.validation_fraction)
            | "FitScaler" >> beam.CombineGlobally(ColumnStatsFn())
        )

        def once(label: str):
            # Each single-worker step gets its own source so that the runner cannot fuse it
            # with a step whose output it waits for as a side input.
            return pbegin | f"Start{label}" >> beam.Create([None])

        def replay(label: str, shards):
            # Shards consumed by a step that also waits for a model trained on those same
            # shards: re-emit them from a fresh root once they are all written, so that the
            # runner cannot fuse the step into the stage that writes them (a cycle that shows
            # up as an empty side input).
            return (
                once(label)
                | f"{label}Shards" >> beam.FlatMap(lambda _, s: s, beam.pvalue.AsList(shards))
                | f"{label}Spread" >> beam.Reshuffle()
            )

        train_list, val_list = beam.pvalue.AsList(train), beam.pvalue.AsList(val)
        model_cfg = ModelConfig.from_dict({**job.model_config, "input_dim": spec.dim})
        if model_cfg.architecture == "stacked":
            codes, val_codes, layers = train, val, []
            for k in range(n_layers(model_cfg)):
                layer = once(f"Layer{k}") | f"TrainLayer{k}" >> beam.Map(
                    lambda _, s, v, st, k=k: train_stack_layer(job, k, s, v, st),
                    beam.pvalue.AsList(codes),
                    beam.pvalue.AsList(val_codes),
                    stats,
                )
                layers.append(layer)
                side = beam.pvalue.AsSingleton(layer)
                enc = _EncodeShard(job.temp_dir, k, first=k == 0)
                codes = replay(f"EncodeTrain{k}", codes) | f"EncodeTrain{k}" >> beam.ParDo(
                    enc, side, stats
                )
                val_codes = replay(f"EncodeVal{k}", val_codes) | f"EncodeVal{k}" >> beam.ParDo(
                    enc, side, stats
                )
            all_layers = layers | "Layers" >> beam.Flatten() | beam.combiners.ToList()
            trained = once("FineTune") | "FineTune" >> beam.Map(
                lambda _, ls, s, v, st: finetune_stack(job, ls, s, v, st),
                beam.pvalue.AsSingleton(all_layers),
                train_list,
                val_list,
                stats,
            )
        else:
            trained = once("Train") | "Train" >> beam.Map(
                lambda _, s, v, st: train_single(job, s, v, st), train_list, val_list, stats
            )
        trained_side = beam.pvalue.AsSingleton(trained)
        terms = SCORES[job.score]
        if terms is None:
            unfitted = once("ScoreFunction") | "ScoreFunction" >> beam.Map(lambda _: None)
        else:

            def score_stats(label: str, shards, part: str):
                if part == "train" and "latent" not in terms:
                    return once(label) | label >> beam.Map(lambda _: None)
                return (
                    replay(label, shards)
                    | label >> beam.ParDo(_ScoreStatsShard(part), trained_side)
                    | f"Merge{label}" >> beam.CombineGlobally(MergeStatsFn())
                )

            unfitted = once("ScoreFunction") | "ScoreFunction" >> beam.Map(
                _fit_score_function,
                beam.pvalue.AsSingleton(score_stats("FeatureErrors", val, "val")),
                beam.pvalue.AsSingleton(score_stats("LatentStats", train, "train")),
                terms,
            )
        unfitted_side = beam.pvalue.AsSingleton(unfitted)
        errors = (
            replay("Calibrate", val)
            | "Calibrate" >> beam.ParDo(_ScoreShard(), trained_side, unfitted_side)
            | "AllErrors" >> beam.CombineGlobally(_ConcatFn())
        )
        rejected_count = rejected | "CountRejected" >> beam.combiners.Count.Globally()
        rejected_examples = (
            rejected
            | "SampleRejected" >> beam.combiners.Sample.FixedSizeGlobally(3)
            | "DescribeRejected"
            >> beam.Map(lambda rows: [f"{r['file']} row {r['row']}: {r['detail']}" for r in rows])
        )
        files = self.read.files
        data = {
            "location_files": len(files),
            "fingerprint": fingerprint([json.dumps(spec.to_dict(), sort_keys=True), *files]),
        }
        result = trained | "Publish" >> beam.Map(
            lambda t, fn, e, r, ex: publish(
                job, spec, t, *finish_score_function(fn, e), DataCounts(r, ex, data)
            ),
            unfitted_side,
            beam.pvalue.AsSingleton(errors),
            beam.pvalue.AsSingleton(rejected_count),
            beam.pvalue.AsSingleton(rejected_examples),
        )
        return {self.RESULT: result, self.REJECTED: rejected}


class _ConcatFn(beam.CombineFn):
    def create_accumulator(self):
        return []

    def add_input(self, acc, arr):
        acc.append(np.asarray(arr, dtype=np.float32))
        return acc

    def merge_accumulators(self, accs):
        return [a for acc in accs for a in acc]

    def extract_output(self, acc):
        return _concat(acc)


__all__ = [
    "ColumnStatsFn",
    "MergeStatsFn",
    "Shard",
    "TrainAutoencoder",
    "TrainJob",
    "finetune_stack",
    "read_shard",
    "shard_stream",
    "train_single",
    "train_stack_layer",
    "write_shard",
]
