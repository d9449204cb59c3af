"""How a record's anomaly score is made from what the autoencoder gives: its per-feature squared
reconstruction errors and its latent code.

Two kinds, each stored with the model version (``to_dict``) and applied by the one scoring core
(:class:`~ae_pipeline.models.scoring.Scorer`), so training, Beam, RunInference and the Kafka
consumer score alike:

* ``mse``: the mean squared error of the (scaled) row, the classic reconstruction score;
* ``normalized`` (the default of a training job): the sum of two terms, each divided by its
  median on the validation rows, so that a typical normal record scores about 2:

  - the **reconstruction term**: each feature's squared error divided by that feature's mean
    squared error on validation rows, averaged over the features (one noisy feature no longer
    drowns the rest);
  - the **latent term**: the Mahalanobis distance (squared) of the code from the training
    codes' mean under their covariance (shrunk towards its mean variance, so a handful of rows
    or a collapsed code still give a well-conditioned inverse): a record that reconstructs well
    but lands where no training record did is still unusual.

  Either term can be switched off (``terms``). Chosen on validation folds of the benchmark's
  training data (``benchmarks/quality/recipe_selection.py``); see the README's "Choosing
  settings".

Statistics are merged over any number of shards (:class:`FeatureErrorStats`,
:class:`LatentStats`), so a Beam combiner fits them over data of any size.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sq, z = rng.random((500, 4)), rng.normal(size=(500, 2))
    >>> fn = ScoreFunction.fit(FeatureErrorStats.of(sq), LatentStats.of(z))
    >>> fn = fn.with_medians(*fn.terms_of(sq, z))
    >>> s = fn.score_numpy(sq, z)
    >>> bool(1.5 < np.median(s) < 2.5), ScoreFunction.from_dict(fn.to_dict()) == fn
    (True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

KINDS = ("mse", "normalized")
TERMS = ("reconstruction", "latent")
#: Shrinkage of the latent covariance towards ``mean variance * I`` (share of the mean variance).
SHRINKAGE = 0.1


@dataclass
class FeatureErrorStats:
    """Sum of each feature's squared error over ``n`` rows (mergeable)."""

    n: int
    total: np.ndarray

    @classmethod
    def of(cls, sq: np.ndarray) -> FeatureErrorStats:
        sq = np.asarray(sq, dtype=np.float64)
        return cls(len(sq), sq.sum(axis=0))

    def merge(self, other: FeatureErrorStats) -> FeatureErrorStats:
        return FeatureErrorStats(self.n + other.n, self.total + other.total)

    def mean(self) -> np.ndarray:
        return self.total / max(self.n, 1)


@dataclass
class LatentStats:
    """Count, sum and sum of outer products of codes (mergeable)."""

    n: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def of(cls, z: np.ndarray) -> LatentStats:
        z = np.asarray(z, dtype=np.float64)
        return cls(len(z), z.sum(axis=0), z.T @ z)

    def merge(self, other: LatentStats) -> LatentStats:
        return LatentStats(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def mean_precision(self) -> tuple[np.ndarray, np.ndarray]:
        """The codes' mean and the inverse of their shrunk covariance."""
        n = max(self.n, 1)
        mean = self.total / n
        cov = self.outer / n - np.outer(mean, mean)
        cov = (cov + cov.T) / 2 * (n / max(n - 1, 1))
        dim = len(mean)
        ridge = SHRINKAGE * max(float(np.trace(cov)) / max(dim, 1), 0.0) + 1e-6
        return mean, np.linalg.inv(cov + ridge * np.eye(dim))


def _floats(name: str, value: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"score function {name} has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"score function {name} is not finite")
    return arr


@dataclass
class ScoreFunction:
    """See the module docstring. Build one with :meth:`fit` then :meth:`with_medians`."""

    kind: str = "mse"
    terms: tuple[str, ...] = TERMS
    feature_scale: np.ndarray | None = None
    latent_mean: np.ndarray | None = None
    latent_precision: np.ndarray | None = None
    medians: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"score kind {self.kind!r} is not one of {', '.join(KINDS)}")
        self.terms = tuple(self.terms)
        unknown = sorted(set(self.terms) - set(TERMS))
        if unknown or not self.terms:
            raise ValueError(
                f"score terms {list(self.terms)} must be a non-empty subset of {TERMS}"
            )
        if self.kind == "normalized":
            if "reconstruction" in self.terms and self.feature_scale is None:
                raise ValueError("a normalized score needs feature_scale")
            if "latent" in self.terms and (
                self.latent_mean is None or self.latent_precision is None
            ):
                raise ValueError("a normalized score with the latent term needs its statistics")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScoreFunction) and self.to_dict() == other.to_dict()

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        features: FeatureErrorStats,
        latent: LatentStats | None,
        terms: Sequence[str] = TERMS,
    ) -> ScoreFunction:
        """A ``normalized`` score from validation rows' feature errors and training codes
        (``latent`` may be None when ``terms`` leaves the latent term out). Its medians are
        1 until :meth:`with_medians` sets them."""
        mean_sq = features.mean()
        floor = 1e-6 * max(float(mean_sq.mean()), 1e-12)
        mean = precision = None
        if "latent" in terms:
            if latent is None:
                raise ValueError("the latent term needs the training codes' statistics")
            mean, precision = latent.mean_precision()
        return cls(
            "normalized",
            tuple(terms),
            feature_scale=np.maximum(mean_sq, floor) if "reconstruction" in terms else None,
            latent_mean=mean,
            latent_precision=precision,
        )

    def terms_of(self, sq: np.ndarray, z: np.ndarray | None) -> list[np.ndarray]:
        """Each term's raw (undivided) value per row, in :attr:`terms` order."""
        out = []
        for term in self.terms:
            if term == "reconstruction":
                out.append((np.asarray(sq, np.float64) / self.feature_scale).mean(axis=1))
            else:
                d = np.asarray(z, np.float64) - self.latent_mean
                out.append(np.einsum("ij,jk,ik->i", d, self.latent_precision, d))
        return out

    def with_medians(self, *values: np.ndarray) -> ScoreFunction:
        """This function with each term divided by its median over ``values`` (the validation
        rows' :meth:`terms_of`)."""
        medians = {
            t: max(float(np.median(v)) if len(v) else 1.0, 1e-12)
            for t, v in zip(self.terms, values, strict=True)
        }
        return ScoreFunction(
            self.kind,
            self.terms,
            self.feature_scale,
            self.latent_mean,
            self.latent_precision,
            medians,
        )

    # ------------------------------------------------------------------ scoring

    @property
    def needs_latent(self) -> bool:
        return self.kind == "normalized" and "latent" in self.terms

    def score_numpy(self, sq: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        """The scores of rows with squared errors ``sq`` (N x D) and codes ``z`` (N x L)."""
        if self.kind == "mse":
            return np.asarray(sq, np.float64).mean(axis=1)
        parts = self.terms_of(sq, z)
        return sum(p / self.medians.get(t, 1.0) for t, p in zip(self.terms, parts, strict=True))

    def torch_scorer(self, device: torch.device) -> Any:
        """A function ``(sq, z) -> scores`` on ``device`` tensors (the hot path)."""
        if self.kind == "mse":
            return lambda sq, z: sq.mean(dim=1)
        fns = []
        for term in self.terms:
            div = self.medians.get(term, 1.0)
            if term == "reconstruction":
                weights = 1.0 / (self.feature_scale * len(self.feature_scale) * div)
                inv = torch.as_tensor(weights, dtype=torch.float32, device=device)
                fns.append(lambda sq, z, inv=inv: sq @ inv)
            else:
                mu = torch.as_tensor(self.latent_mean, dtype=torch.float32, device=device)
                prec = torch.as_tensor(
                    self.latent_precision / div, dtype=torch.float32, device=device
                )

                def latent(sq, z, mu=mu, prec=prec):
                    d = z.float() - mu
                    return ((d @ prec) * d).sum(dim=1)

                fns.append(latent)

        def score(sq, z):
            total = fns[0](sq, z)
            for fn in fns[1:]:
                total = total + fn(sq, z)
            return total

        return score

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "mse":
            return {"kind": "mse"}
        out: dict[str, Any] = {"kind": self.kind, "terms": list(self.terms)}
        if self.feature_scale is not None:
            out["feature_scale"] = [float(v) for v in self.feature_scale]
        if self.latent_mean is not None:
            out["latent_mean"] = [float(v) for v in self.latent_mean]
            out["latent_precision"] = [[float(v) for v in row] for row in self.latent_precision]
        out["medians"] = {k: float(v) for k, v in self.medians.items()}
        return out

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any] | None,
        *,
        input_dim: int | None = None,
        latent_dim: int | None = None,
    ) -> ScoreFunction:
        """The function stored by :meth:`to_dict` (None or missing: ``mse``, as versions
        published before score functions existed). Shapes are checked against the model's
        widths when given; a ValueError names what is wrong."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"score function must be a mapping, got {type(data).__name__}")
        kind = data.get("kind", "mse")
        if kind == "mse":
            return cls()
        terms = tuple(data.get("terms", TERMS))
        scale = mean = precision = None
        if "reconstruction" in terms:
            scale = _floats(
                "feature_scale",
                data.get("feature_scale"),
                None if input_dim is None else (input_dim,),
            )
            if np.any(scale <= 0):
                raise ValueError("score function feature_scale must be > 0")
        if "latent" in terms:
            mean = _floats(
                "latent_mean",
                data.get("latent_mean"),
                None if latent_dim is None else (latent_dim,),
            )
            precision = _floats(
                "latent_precision", data.get("latent_precision"), (len(mean), len(mean))
            )
        medians = {str(k): float(v) for k, v in dict(data.get("medians") or {}).items()}
        if any(not np.isfinite(v) or v <= 0 for v in medians.values()):
            raise ValueError("score function medians must be finite and > 0")
        return cls(kind, terms, scale, mean, precision, medians)
