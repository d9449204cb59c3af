"""The anomaly score as a stored function: fitting, storage, the torch path equal to the numpy
one, and what the normalized score is for (a noisy feature no longer drowns a quiet one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ae_pipeline.models import (
    FeatureErrorStats,
    LatentStats,
    ModelConfig,
    ScoreFunction,
    Scorer,
    build_model,
    fit,
    fit_score_function,
)
from ae_pipeline.models.config import TrainConfig


def _stats(seed=0, n=400, d=5, k=3):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)) * np.arange(1, d + 1), rng.normal(size=(n, k)) @ rng.normal(
        size=(k, k)
    )


def test_statistics_merge_like_one_pass():
    sq, z = _stats()
    a = FeatureErrorStats.of(sq[:150]).merge(FeatureErrorStats.of(sq[150:]))
    np.testing.assert_allclose(a.mean(), sq.mean(axis=0))
    b = LatentStats.of(z[:10]).merge(LatentStats.of(z[10:]))
    mean, precision = b.mean_precision()
    np.testing.assert_allclose(mean, z.mean(axis=0))
    _, whole_precision = LatentStats.of(z).mean_precision()
    np.testing.assert_allclose(precision, whole_precision, rtol=1e-9)


def test_each_term_is_divided_by_its_validation_median():
    sq, z = _stats()
    fn = ScoreFunction.fit(FeatureErrorStats.of(sq), LatentStats.of(z))
    fn = fn.with_medians(*fn.terms_of(sq, z))
    terms = fn.terms_of(sq, z)
    for term, values in zip(fn.terms, terms, strict=True):
        assert np.median(values / fn.medians[term]) == pytest.approx(1.0)
    assert 1.5 < np.median(fn.score_numpy(sq, z)) < 2.5


@pytest.mark.parametrize("terms", [("reconstruction", "latent"), ("reconstruction",), ("latent",)])
def test_torch_scores_equal_numpy_scores_and_survive_storage(terms):
    sq, z = _stats(1)
    fn = ScoreFunction.fit(FeatureErrorStats.of(sq), LatentStats.of(z), terms)
    fn = fn.with_medians(*fn.terms_of(sq, z))
    again = ScoreFunction.from_dict(fn.to_dict(), input_dim=5, latent_dim=3)
    assert again == fn and again.terms == terms
    torch_scores = fn.torch_scorer(torch.device("cpu"))(
        torch.as_tensor(sq, dtype=torch.float32), torch.as_tensor(z, dtype=torch.float32)
    )
    np.testing.assert_allclose(torch_scores.numpy(), fn.score_numpy(sq, z), rtol=1e-4)


def test_mse_is_the_default_and_reads_versions_without_a_function():
    for stored in (None, {}, {"kind": "mse"}):
        assert ScoreFunction.from_dict(stored) == ScoreFunction()
    sq, _ = _stats()
    np.testing.assert_allclose(ScoreFunction().score_numpy(sq, None), sq.mean(axis=1))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"kind": "zscore"}, "score kind 'zscore'"),
        ({"terms": ["reconstruction", "density"]}, "subset of"),
        ({"feature_scale": [1.0, 2.0]}, "feature_scale has shape (2,)"),
        ({"feature_scale": [1.0, 0.0, 1.0, 1.0, 1.0]}, "feature_scale must be > 0"),
        ({"latent_mean": [0.0, float("nan"), 0.0]}, "latent_mean is not finite"),
        ({"latent_precision": [[1.0]]}, "latent_precision has shape (1, 1)"),
        ({"medians": {"latent": -1.0}}, "medians must be finite and > 0"),
    ],
)
def test_a_damaged_function_is_refused_naming_the_field(change, words):
    sq, z = _stats()
    fn = ScoreFunction.fit(FeatureErrorStats.of(sq), LatentStats.of(z))
    data = {**fn.with_medians(*fn.terms_of(sq, z)).to_dict(), **change}
    with pytest.raises(ValueError) as err:
        ScoreFunction.from_dict(data, input_dim=5, latent_dim=3)
    assert words in str(err.value)


def test_scorer_scores_by_its_function_and_keeps_the_plain_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    scorer = Scorer(build_model(ModelConfig(6, hidden_dims=[8], latent_dim=2), seed=0))
    fn = fit_score_function(scorer, x[:200], x[200:])
    scoring = scorer.with_score_function(fn)
    result = scoring.score(x, latent=True, reconstruction=False, contributions=True)
    np.testing.assert_allclose(result.error, scorer.errors(x), rtol=1e-6)
    np.testing.assert_allclose(
        result.score, fn.score_numpy(result.contributions, result.latent), rtol=1e-4
    )
    np.testing.assert_allclose(scoring.scores(x), result.score, rtol=1e-6)
    assert fit_score_function(scorer, x[:200], x[200:], kind="mse") == ScoreFunction()


def test_a_noisy_feature_no_longer_drowns_an_anomaly_in_a_quiet_one():
    """Feature 0 is noise no code can carry; features 1-3 and 4-6 repeat two factors. A record
    whose feature 1 is out of step with 2 and 3 has a small squared error next to feature 0's,
    so the MSE barely ranks it; each feature's error over its own validation error does."""
    rng = np.random.default_rng(3)

    def rows(n):
        factors = np.repeat(rng.normal(size=(n, 2)), 3, axis=1)
        quiet = factors + 0.05 * rng.normal(size=(n, 6))
        return np.hstack([rng.normal(size=(n, 1)), quiet]).astype(np.float32)

    train, val, test = rows(3000), rows(500), rows(500)
    test[:50, 1] += 0.75
    y = np.r_[np.ones(50), np.zeros(450)]
    cfg = ModelConfig(7, hidden_dims=[16], latent_dim=2)
    model, _ = fit(cfg, train, TrainConfig(epochs=20, seed=0, progress=False, device="cpu"))
    scorer = Scorer(model)
    mse_auc = roc_auc_score(y, scorer.errors(test))
    fn = fit_score_function(scorer, train, val, terms=("reconstruction",))
    normalized_auc = roc_auc_score(y, scorer.with_score_function(fn).scores(test))
    assert normalized_auc > 0.9 and normalized_auc > mse_auc + 0.1, (mse_auc, normalized_auc)
