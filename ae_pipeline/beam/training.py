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
   (:class:`~ae_pipeline.registry.ModelRegistry`), or a refusal that says why.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from ae_pipeline.beam.parquet import NAMESPACE, REJECTED, Block, ReadFeatureBlocks, validation_mask
from ae_pipeline.calibration import calibrate
from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler, fingerprint

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """Everything the training stages need; JSON-friendly so it travels to workers cheaply.

    Attributes:
        model_root: where versions are published.
        temp_dir: scratch space for shards and intermediate models (any Beam filesystem).
        model_config: :class:`~ae_pipeline.models.ModelConfig` as a dict (input_dim is filled
            in from the data).
        train_config: :class:`~ae_pipeline.models.TrainConfig` as a dict.
        scaler: ``none``, ``standard`` or ``minmax``.
        validation_fraction: share of rows (by key hash) held out for validation/calibration.
        threshold_method / threshold_param: see :func:`ae_pipeline.calibration.calibrate`.
        warm_start: start from the newest published version's weights when compatible.
        max_val_loss_increase: refuse to publish when the new validation loss exceeds the
            current version's by more than this fraction (None: always publish).
        finetune_config: training settings of the stacked model's fine-tuning (default: same).
        report: write loss curves, score histogram and metrics into the version.
    """

    model_root: str
    temp_dir: str
    model_config: dict[str, Any]
    train_config: dict[str, Any] = field(default_factory=dict)
    scaler: str = "standard"
    validation_fraction: float = 0.2
    threshold_method: str = "quantile"
    threshold_param: float = 0.99
    warm_start: bool = False
    max_val_loss_increase: float | None = None
    finetune_config: dict[str, Any] | None = None
    report: bool = True


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


class ColumnStatsFn(beam.CombineFn):
    """Mergeable per-feature statistics of :class:`Block` elements."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, block: Block):
        stats = ColumnStats.of(block.x)
        return stats if acc is None else acc.merge(stats)

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = a if out is None else out.merge(a)
        return out

    def extract_output(self, acc):
        return acc


# ------------------------------------------------------------------------------------------
# Training steps (plain functions; the DoFns below call them)
# ------------------------------------------------------------------------------------------


def _configs(job: TrainJob, input_dim: int):
    from ae_pipeline.models import ModelConfig, TrainConfig

    model_cfg = ModelConfig.from_dict({**job.model_config, "input_dim": input_dim})
    train_cfg = TrainConfig.from_dict(job.train_config)
    return model_cfg, train_cfg


def _history(history) -> dict:
    """A trainer History as JSON, with the per-epoch loss lists the report plots."""
    return {
        **history.to_dict(),
        "train_losses": history.train_losses,
        "val_losses": history.val_losses,
        "samples_per_s": history.samples_per_s,
    }


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


def train_single(job: TrainJob, train: list[Shard], val: list[Shard], stats: ColumnStats) -> dict:
    """Train a (non-stacked) model from shard streams; returns the temp model path + history."""
    from ae_pipeline.models import Trainer, build_model
    from ae_pipeline.models.factory import load_weights

    if not train:
        raise ValueError("no training rows left after validation split and rejections")
    scaler = Scaler.fit(job.scaler, stats)
    model_cfg, train_cfg = _configs(job, len(stats.mean))
    model = build_model(model_cfg, seed=train_cfg.seed)
    init = _warm_start_weights(job, model_cfg)
    if init is not None:
        load_weights(model, init)
    supervised = model_cfg.num_classes is not None
    history = Trainer(train_cfg).fit(
        model,
        shard_stream(train, scaler, labels=supervised, seed=train_cfg.seed),
        val=shard_stream(val, scaler, labels=supervised, seed=None) if val else None,
    )
    path = _save_temp_model(job.temp_dir, "model", model, model_cfg)
    return {
        "model_path": path,
        "scaler": scaler.to_dict(),
        "history": _history(history),
        "warm_start": init is not None,
    }


def train_stack_layer(
    job: TrainJob, index: int, shards: list[Shard], val: list[Shard], stats
) -> dict:
    """Greedy pretraining of stacked layer ``index`` on the previous layer's code shards."""
    from ae_pipeline.models import stacked

    scaler = Scaler.fit(job.scaler, stats) if index == 0 else None
    model_cfg, train_cfg = _configs(job, len(stats.mean))
    layer, history = stacked.train_layer(
        model_cfg,
        index,
        shard_stream(shards, scaler, seed=train_cfg.seed),
        train_cfg,
        val=shard_stream(val, scaler, seed=None) if val else None,
    )
    path = _save_temp_model(job.temp_dir, f"layer{index}", layer, layer.config)
    return {"model_path": path, "history": _history(history), "layer": index}


class _EncodeShard(beam.DoFn):
    """Encode one shard with a pretrained layer; write the codes as a new shard."""

    def __init__(self, temp_dir: str, index: int, first: bool):
        self.temp_dir, self.index, self.first = temp_dir, index, first

    def process(self, shard: Shard, layer: dict, stats):
        from ae_pipeline.artifact import load_artifact
        from ae_pipeline.models import stacked

        model = load_artifact(layer["model_path"]).model
        x, y = read_shard(shard.path)
        if self.first:
            x = Scaler.fit(layer["scaler_kind"], stats).transform(x)
        codes = stacked.encode_with_layer(model, x)
        name = f"codes{self.index}/{uuid.uuid4().hex}.npz"
        yield write_shard(FileSystems.join(self.temp_dir, name), codes, y)


def finetune_stack(job: TrainJob, layers: list[dict], train, val, stats) -> dict:
    """Assemble the pretrained layers and fine-tune end to end (supervised with labels)."""
    from ae_pipeline.artifact import load_artifact
    from ae_pipeline.models import TrainConfig, stacked

    scaler = Scaler.fit(job.scaler, stats)
    model_cfg, train_cfg = _configs(job, len(stats.mean))
    if job.finetune_config:
        train_cfg = TrainConfig.from_dict(job.finetune_config)
    layers = sorted(layers, key=lambda d: d["layer"])
    stack = stacked.assemble_stack(
        model_cfg, [load_artifact(d["model_path"]).model for d in layers]
    )
    supervised = model_cfg.num_classes is not None
    history = stacked.fine_tune(
        stack,
        shard_stream(train, scaler, labels=supervised, seed=train_cfg.seed),
        train_cfg,
        val=shard_stream(val, scaler, labels=supervised, seed=None) if val else None,
        supervised=supervised,
    )
    path = _save_temp_model(job.temp_dir, "stack", stack, model_cfg)
    return {
        "model_path": path,
        "scaler": scaler.to_dict(),
        "history": _history(history),
        "layers": [{"layer": d["layer"], "history": d["history"]} for d in layers],
        "warm_start": False,
    }


class _ScoreShard(beam.DoFn):
    """Reconstruction errors of one validation shard (the same Scorer as streaming)."""

    def process(self, shard: Shard, trained: dict):
        from ae_pipeline.artifact import load_artifact
        from ae_pipeline.models.scoring import Scorer

        model = load_artifact(trained["model_path"]).model
        x, _ = read_shard(shard.path)
        x = Scaler.from_dict(trained["scaler"]).transform(x)
        yield Scorer(model).errors(x)


def _concat(arrays) -> np.ndarray:
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays) if arrays else np.empty(0, np.float32)


def publish(
    job: TrainJob, spec: FeatureSpec, trained: dict, errors: np.ndarray, counts: dict
) -> dict:
    """Calibrate, compare with the current version, and publish (or refuse, saying why)."""
    from ae_pipeline.artifact import load_artifact, save_artifact
    from ae_pipeline.models import TrainConfig
    from ae_pipeline.registry import ModelRegistry

    loaded = load_artifact(trained["model_path"])
    history = trained["history"]
    val_losses = [v for v in history.get("val_losses", []) if v is not None]
    val_loss = float(min(val_losses)) if val_losses else None
    threshold = (
        calibrate(errors, job.threshold_method, job.threshold_param) if len(errors) else None
    )
    metrics = {
        "val_loss": val_loss,
        "val_error_mean": float(np.mean(errors)) if len(errors) else None,
        "train_loss": history.get("train_losses", [None])[-1],
        "epochs": len(history.get("train_losses", [])),
        "history": history,
        "layers": trained.get("layers"),
        "warm_start": trained.get("warm_start", False),
        **{k: v for k, v in counts.items() if k != "data"},
    }
    registry = ModelRegistry(job.model_root)
    current = registry.latest()
    if current is not None and job.max_val_loss_increase is not None and val_loss is not None:
        prev = load_artifact(registry.path(current)).metrics.get("val_loss")
        if prev is not None and val_loss > prev * (1.0 + job.max_val_loss_increase):
            reason = (
                f"refused to publish: validation loss {val_loss:.6g} is worse than current "
                f"version {current}'s {prev:.6g} by more than {job.max_val_loss_increase:.0%}"
            )
            log.warning(reason)
            return {"published": None, "refused": reason, "current": current, "metrics": metrics}

    def write(directory: str) -> None:
        save_artifact(
            directory,
            loaded.model,
            loaded.model_config,
            feature_columns=list(spec.columns),
            scaler=trained["scaler"],
            threshold=threshold,
            metrics=metrics,
            train_config=TrainConfig.from_dict(job.train_config),
            data_fingerprint=counts.get("data"),
            extra={
                "feature_spec": spec.to_dict(),
                "job": {
                    "scaler": job.scaler,
                    "validation_fraction": job.validation_fraction,
                },
            },
        )
        if job.report:
            from ae_pipeline.report import write_training_report

            write_training_report(FileSystems.join(directory, "report"), metrics, threshold, errors)

    version = registry.publish(write, metadata={"val_loss": val_loss})
    log.info("published model version %s under %s", version, job.model_root)
    return {
        "published": version,
        "path": registry.path(version),
        "metrics": metrics,
        "threshold": threshold,
    }


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

    Output: a PCollection with one dict, ``{"published": version or None, "refused": reason?,
    "metrics": {...}, "threshold": {...}}``; ``self.rejected`` is the PCollection of rejected
    rows after expansion.
    """

    def __init__(self, location: str, spec: FeatureSpec, job: TrainJob, *, block_rows: int = 65536):
        super().__init__()
        self.read = ReadFeatureBlocks(location, spec, block_rows=block_rows)
        self.spec = self.read.resolved_spec
        self.job = job
        self.rejected = None
        from ae_pipeline.models import ModelConfig

        # Fail before the pipeline runs when the options do not make a valid model.
        ModelConfig.from_dict({**job.model_config, "input_dim": self.spec.dim})

    def expand(self, pbegin):
        from ae_pipeline.models import ModelConfig
        from ae_pipeline.models.stacked import n_layers

        job, spec = self.job, self.spec
        read = pbegin | "Read" >> self.read
        self.rejected = read[REJECTED]
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
                    lambda _, s, v, st, k=k: {
                        **train_stack_layer(job, k, s, v, st),
                        "scaler_kind": job.scaler,
                    },
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
        errors = (
            replay("Calibrate", val)
            | "Calibrate" >> beam.ParDo(_ScoreShard(), beam.pvalue.AsSingleton(trained))
            | "AllErrors" >> beam.CombineGlobally(_ConcatFn())
        )
        rejected_count = self.rejected | "CountRejected" >> beam.combiners.Count.Globally()
        files = self.read.files
        data = {
            "location_files": len(files),
            "fingerprint": fingerprint([json.dumps(spec.to_dict(), sort_keys=True), *files]),
        }
        return trained | "Publish" >> beam.Map(
            lambda t, e, r: publish(job, spec, t, e, {"rows_rejected": r, "data": data}),
            beam.pvalue.AsSingleton(errors),
            beam.pvalue.AsSingleton(rejected_count),
        )


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


def summarize(result: dict) -> str:
    """One line for people: version or refusal, losses, threshold."""
    m = result.get("metrics", {})
    if result.get("published"):
        t = result.get("threshold") or {}
        return (
            f"published {result['published']}: val_loss={m.get('val_loss')!s:.8} "
            f"threshold={t.get('value', float('nan')):.5g} ({t.get('method')} {t.get('param')})"
        )
    return str(result.get("refused"))


def to_json(result: dict) -> str:
    return json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
