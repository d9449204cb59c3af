"""The batch flag job (``ae-pipeline score``) and its evaluate mode, on real Parquet files, a real
published model and FnApiRunner; ROC/PR metrics checked by hand and against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ae_pipeline.artifact import save_artifact
from ae_pipeline.calibration import calibrate
from ae_pipeline.features import ColumnStats, FeatureSpec, Scaler
from ae_pipeline.local.runners import runner_args
from ae_pipeline.models import ModelConfig, Scorer, TrainConfig, Trainer, build_model
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.report import average_precision, evaluate_scores, roc_auc, roc_curve
from ae_pipeline.serving import ServingModel
from pipelines import score as score_job

D = 8
COLUMNS = [f"f{i}" for i in range(D)]


def _normal(rng, n):
    basis = np.random.default_rng(42).normal(size=(2, D))
    return rng.normal(size=(n, 2)) @ basis + 0.05 * rng.normal(size=(n, D))


def _publish(root, *, threshold=True) -> str:
    """Trains a small model in process and publishes it (scaler, threshold, feature names);
    without a threshold it is only saved (the registry refuses to publish it)."""
    rng = np.random.default_rng(0)
    x = _normal(rng, 1200)
    scaler = Scaler.fit("standard", ColumnStats.of(x[:1000]))
    cfg = ModelConfig(D, hidden_dims=[16], latent_dim=2)
    model = build_model(cfg, seed=0)
    tc = TrainConfig(epochs=60, batch_size=64, lr=3e-3, progress=False, num_threads=1)
    Trainer(tc).fit(model, scaler.transform(x[:1000]))
    errors = Scorer(model).errors(scaler.transform(x[1000:]))

    def write(directory):
        save_artifact(
            directory,
            model,
            cfg,
            feature_columns=COLUMNS,
            scaler=scaler.to_dict(),
            threshold=calibrate(errors, "quantile", 0.99) if threshold else None,
            extra={"feature_spec": FeatureSpec(columns=COLUMNS).to_dict()},
        )

    if not threshold:
        write(str(root))
        return str(root)
    registry = ModelRegistry(str(root))
    return registry.path(registry.publish(write))


def _data(path, *, n=600, anomalies=30, nan_row=True, null_label=False):
    rng = np.random.default_rng(7)
    x = _normal(rng, n)
    label = np.zeros(n, dtype=np.int64)
    idx = rng.choice(n, anomalies, replace=False)
    x[idx] += rng.normal(0, 3.0, size=(anomalies, D))
    label[idx] = 2  # any non-zero label is an anomaly by default
    if nan_row:
        x[3, 1] = np.nan
    cols = {c: x[:, j] for j, c in enumerate(COLUMNS)}
    cols["id"] = np.arange(n)
    cols["label"] = pa.array(label, mask=np.arange(n) == 5 if null_label else None)
    path.mkdir(parents=True, exist_ok=True)
    for s, part in enumerate(np.array_split(np.arange(n), 2)):
        table = pa.table(
            {k: v.take(part) if isinstance(v, pa.Array) else v[part] for k, v in cols.items()}
        )
        pq.write_table(table, path / f"p{s}.parquet")
    return path, x, label


def _args(**kw):
    return [f"--{k}={v}" for k, v in kw.items()] + runner_args("fnapi")


def test_score_writes_flags_through_the_serving_path_and_evaluates(tmp_path):
    version_dir = _publish(tmp_path / "models")
    data, x, _ = _data(tmp_path / "data")
    out = tmp_path / "flags"
    summary = score_job.run(
        _args(
            input=data,
            model_root=tmp_path / "models",
            output=out,
            key_column="id",
            label_column="label",
            top_k=3,
        )
    )
    assert summary["rows"] == 599 and summary["rejected"] == 1
    assert summary["model"] == version_dir
    table = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("id")
    assert table.column_names == [
        "id",
        "score",
        "threshold",
        "is_anomaly",
        "top_features",
        "top_contributions",
        "label",
    ]
    ids = table.column("id").to_numpy()
    assert 3 not in ids and len(ids) == 599
    score = table.column("score").to_numpy()
    threshold = summary["threshold"]
    assert (table.column("threshold").to_numpy() == threshold).all()
    assert (table.column("is_anomaly").to_numpy() == (score > threshold)).all()
    assert summary["anomalies"] == int((score > threshold).sum())
    # The same numbers as the streaming side's scoring path (not bit-exact: other batches).
    serving = ServingModel.load(version_dir, device="cpu")
    np.testing.assert_allclose(score, serving.score_matrix(x[ids], "flag")["score"], rtol=1e-4)
    tops = table.column("top_contributions").to_pylist()
    assert all(len(t) == 3 and t == sorted(t, reverse=True) for t in tops)
    assert set(table.column("top_features").to_pylist()[0]) <= set(COLUMNS)
    assert '"reason": "non_finite"' in next(out.glob("rejected/*.jsonl")).read_text()
    # Evaluate mode: planted anomalies are found.
    ev = summary["evaluation"]
    assert ev["anomalies"] == 30 and ev["normal"] == 569
    assert ev["roc_auc"] > 0.9 and ev["pr_auc"] > 0.7, ev
    assert ev["at_threshold"]["recall"] > 0.8, ev["at_threshold"]
    report = out / "report"
    assert (report / "roc.png").stat().st_size > 1000 and (report / "pr.png").stat().st_size > 1000
    assert json.loads((report / "evaluation.json").read_text())["roc_auc"] == ev["roc_auc"]
    text = score_job.describe(summary)
    assert "ROC-AUC" in text and "PR-AUC" in text and "599 rows" in text


def test_positive_label_and_report_dir(tmp_path):
    _publish(tmp_path / "models")
    data, _, _ = _data(tmp_path / "data", nan_row=False, null_label=True)
    summary = score_job.run(
        _args(
            input=data,
            model_root=tmp_path / "models",
            output=tmp_path / "out",
            label_column="label",
            positive_label=1,  # no row has label 1: nothing to evaluate, said plainly
            report_dir=tmp_path / "rep",
        )
    )
    # A row without a label cannot be evaluated: rejected, saying why.
    assert summary["rows"] == 599 and summary["rejected"] == 1
    assert "null label in 'label'" in next((tmp_path / "out").glob("rejected/*.jsonl")).read_text()
    assert "roc_auc" not in summary["evaluation"]
    assert "needs both anomalies and normal rows" in summary["evaluation"]["error"]


def test_mistakes_are_one_line_before_any_work(tmp_path, capsys):
    version_dir = _publish(tmp_path / "models")
    data, _, _ = _data(tmp_path / "data")
    base = {"input": data, "model_root": tmp_path / "models"}
    cases = [
        ({**base}, "missing --output"),
        ({**base, "output": tmp_path / "o", "label_column": "nope"}, "'nope'"),
        ({**base, "output": tmp_path / "o", "positive_label": 1}, "needs --label_column"),
        ({**base, "output": tmp_path / "o", "top_k": -1}, "--top_k"),
        ({"input": data, "output": tmp_path / "o"}, "--model_root"),
    ]
    for kwargs, words in cases:
        assert score_job.main(_args(**kwargs)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ae-pipeline score: error:") and words in err, err
        assert "\n" not in err
    assert not (tmp_path / "o").exists()
    # A version without a threshold cannot flag, unless one is given.
    bare = tmp_path / "bare"
    art_dir = _publish(bare, threshold=False)
    assert score_job.main(_args(input=data, model_version_dir=art_dir, output=tmp_path / "o")) == 2
    assert "pass --threshold" in capsys.readouterr().err
    assert version_dir != art_dir


def test_roc_and_pr_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positives = np.array([1, 0, 1, 0, 0, 0], dtype=bool)
    # Pairs (anomaly, normal) ordered right: 0.9 beats all 4; 0.7 beats 3 of 4: 7 of 8.
    assert roc_auc(scores, positives) == pytest.approx(7 / 8)
    # Precision at each anomaly: 1/1 and 2/3; mean over the two anomalies.
    assert average_precision(scores, positives) == pytest.approx((1 + 2 / 3) / 2)
    # Ties count one half: all scores equal.
    assert roc_auc(np.ones(4), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    curve = roc_curve(scores, positives)
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1 and curve["fpr"][-1] == 1
    m = evaluate_scores(scores, positives, threshold=0.65)
    assert m["at_threshold"]["true_positives"] == 2 and m["at_threshold"]["false_positives"] == 1
    with pytest.raises(ValueError, match="both anomalies and normal rows"):
        roc_auc(scores, np.zeros(6, bool))


def test_roc_and_pr_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    positives = rng.random(500) < 0.1
    scores = np.round(rng.normal(size=500) + 1.5 * positives, 1)  # rounded: many ties
    assert roc_auc(scores, positives) == pytest.approx(metrics.roc_auc_score(positives, scores))
    assert average_precision(scores, positives) == pytest.approx(
        metrics.average_precision_score(positives, scores)
    )
