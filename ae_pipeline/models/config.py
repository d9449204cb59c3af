"""JSON-serialisable configuration of autoencoder models and of their training.

Every variant the library offers is a :class:`ModelConfig`: the architecture (``mlp``,
``stacked``, ``vae``, ``conv``) picks the building blocks, and options switch on what makes an
autoencoder sparse (:class:`SparsityConfig`), denoising (:class:`CorruptionConfig`) or
regularised (weight penalties, total variation). :class:`TrainConfig` holds the optimiser and
loop settings. Both round-trip through plain dicts (``to_dict`` / ``from_dict``) so that they can
be stored in a model artifact or passed as a pipeline option; ``from_dict`` refuses unknown keys.

Example:
    >>> cfg = ModelConfig(784, hidden_dims=[128], latent_dim=32, output_activation="sigmoid")
    >>> cfg.variant
    'undercomplete'
    >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ae_pipeline.models.checks import (
    ConfigError,
    _check_choice,
    _check_in_range,
    _check_int_at_least,
    _check_non_negative,
    _check_positive_ints,
    _is_number,
    _require,
    _Serializable,
)
from ae_pipeline.models.train_config import OPTIMIZERS, TrainConfig

ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "linear", "identity")
ARCHITECTURES = ("mlp", "stacked", "vae", "conv")
CORRUPTIONS = ("gaussian", "masking", "salt_and_pepper")
SPARSITY_KINDS = ("kl", "l1")
VARIANTS = (
    "undercomplete",
    "sparse",
    "denoising",
    "stacked",
    "variational",
    "convolutional",
)


# Architecture name -> its model class (``register_architecture``; each variant module registers
# itself when imported, which ``ae_pipeline.models`` does). Kept as ``Any``: this module is
# below the model classes.
_ARCHITECTURE_CLASSES: dict[str, Any] = {}
# ModelConfig fields that only some architectures read: unset (None) for the others.
_ARCHITECTURE_FIELDS = ("decoder_dims", "layers", "sparsity")


def register_architecture(name: str, cls: Any) -> Any:
    """Makes ``ModelConfig(architecture=name)`` build ``cls``, a subclass of
    :class:`~ae_pipeline.models.base.Autoencoder` whose ``accepts`` names the optional
    architecture fields it reads (``decoder_dims``, ``layers``, ``sparsity``) and whose
    ``check_config`` checks its own settings. Returns ``cls`` (usable as a decorator).

    Raises:
        ValueError: the name is taken by another class.
    """
    taken = _ARCHITECTURE_CLASSES.get(name)
    # The same class again (its module imported a second time, e.g. by doctest) replaces it.
    if taken is not None and taken.__qualname__ != cls.__qualname__:
        raise ValueError(f"architecture {name!r} is taken by {taken.__qualname__}")
    _ARCHITECTURE_CLASSES[name] = cls
    return cls


def architecture_class(name: str) -> Any:
    """The model class registered for architecture ``name``.

    Raises:
        ConfigError: no architecture has that name.
    """
    _check_choice("ModelConfig", "architecture", name, architecture_names())
    return _ARCHITECTURE_CLASSES[name]


def architecture_names() -> tuple[str, ...]:
    """Every registered architecture (the built-in :data:`ARCHITECTURES` first)."""
    extra = [name for name in _ARCHITECTURE_CLASSES if name not in ARCHITECTURES]
    return (*ARCHITECTURES, *extra)


@dataclass
class SparsityConfig(_Serializable):
    """Sparsity penalty on the code (latent) activations.

    Attributes:
        kind: ``"kl"`` adds ``beta * sum_j KL(rho || rho_hat_j)`` where ``rho_hat_j`` is the mean
            activation of code unit j over the batch (needs codes in (0, 1), so a sigmoid latent
            activation); ``"l1"`` adds ``beta * mean(|code|)``.
        rho: target mean activation for ``"kl"``, in (0, 1).
        beta: weight of the penalty.
    """

    kind: str = "kl"
    rho: float = 0.05
    beta: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("SparsityConfig", "kind", self.kind, SPARSITY_KINDS)
        _check_in_range("SparsityConfig", "rho", self.rho, 0.0, 1.0, closed="()")
        _check_non_negative("SparsityConfig", "beta", self.beta)


@dataclass
class CorruptionConfig(_Serializable):
    """Input corruption for denoising autoencoders, applied only while training.

    Attributes:
        kind: ``"gaussian"`` adds N(0, sigma^2) noise; ``"masking"`` sets a random ``fraction``
            of the features to zero (dropout noise); ``"salt_and_pepper"`` sets a random
            ``fraction`` of the features to ``pepper`` or ``salt`` with equal probability.
        sigma: standard deviation of the Gaussian noise.
        fraction: share of features corrupted by masking or salt-and-pepper, in [0, 1].
        clip: optional ``[low, high]`` range the corrupted input is clipped to (e.g. ``[0, 1]``
            for pixels).
        salt: value of "salt" features.
        pepper: value of "pepper" features.
    """

    kind: str = "gaussian"
    sigma: float = 0.1
    fraction: float = 0.25
    clip: list[float] | None = None
    salt: float = 1.0
    pepper: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("CorruptionConfig", "kind", self.kind, CORRUPTIONS)
        _check_non_negative("CorruptionConfig", "sigma", self.sigma)
        _check_in_range("CorruptionConfig", "fraction", self.fraction, 0.0, 1.0)
        for name in ("salt", "pepper"):
            _require(
                _is_number(getattr(self, name)),
                f"{name} must be a finite number, got {getattr(self, name)!r} "
                f"(CorruptionConfig.{name})",
            )
        if self.clip is not None:
            self.clip = [float(v) for v in self.clip]
            _require(
                len(self.clip) == 2 and self.clip[0] < self.clip[1],
                f"CorruptionConfig.clip must be [low, high] with low < high, got {self.clip!r}",
            )


@dataclass
class LayerOptions(_Serializable):
    """Options of one layer of a stacked autoencoder, used by its greedy pretraining.

    Each layer is pretrained as a one-hidden-layer autoencoder on the codes of the layer below,
    with its own options; ``None`` means "derive from the model config" (see
    :func:`ae_pipeline.models.stacked.layer_config`).

    Attributes:
        activation: activation of this layer's code.
        output_activation: activation of this layer's reconstruction (and of the matching layer
            of the stacked decoder).
        loss: reconstruction loss name used while pretraining this layer.
        sparsity: sparsity penalty on this layer's code while pretraining it.
        corruption: corruption of this layer's input while pretraining it.
        weight_l1: L1 weight penalty while pretraining it.
        weight_l2: L2 weight penalty while pretraining it.
    """

    activation: str | None = None
    output_activation: str | None = None
    loss: str | None = None
    sparsity: SparsityConfig | None = None
    corruption: CorruptionConfig | None = None
    weight_l1: float = 0.0
    weight_l2: float = 0.0

    _nested = {"sparsity": SparsityConfig, "corruption": CorruptionConfig}

    def __post_init__(self) -> None:
        for name in ("activation", "output_activation"):
            value = getattr(self, name)
            if value is not None:
                _check_choice("LayerOptions", name, value, ACTIVATIONS)
        _check_non_negative("LayerOptions", "weight_l1", self.weight_l1)
        _check_non_negative("LayerOptions", "weight_l2", self.weight_l2)


@dataclass
class ModelConfig(_Serializable):
    """Architecture and objective of one autoencoder.

    Attributes:
        input_dim: number of input features (for ``conv``, derived from ``input_shape`` when
            omitted).
        architecture: ``"mlp"`` (fully connected), ``"stacked"`` (fully connected, trained layer
            by layer), ``"vae"`` (variational, Gaussian latent) or ``"conv"`` (convolutional,
            image-shaped input).
        hidden_dims: widths of the encoder's hidden layers, input side first.
        latent_dim: width of the code (bottleneck).
        decoder_dims: widths of the decoder's hidden layers, code side first; ``None`` mirrors
            the encoder (``mlp`` and ``vae`` only).
        activation: activation of hidden layers.
        latent_activation: activation of the code (``mlp``, ``stacked``, ``conv``).
        output_activation: activation of the reconstruction: ``"sigmoid"`` for data in [0, 1],
            ``"identity"`` otherwise.
        loss: reconstruction loss: ``"mse"``, ``"bce"`` or a name registered with
            :func:`ae_pipeline.models.losses.register_loss`.
        weight_l1: lambda of the L1 penalty on weights (not biases).
        weight_l2: lambda of the L2 penalty on weights (not biases).
        sparsity: optional sparsity penalty on the code.
        corruption: optional input corruption while training (denoising autoencoder).
        tv_weight: weight of a total-variation penalty on the reconstruction (needs
            ``input_shape``).
        input_shape: ``[channels, height, width]`` of image-shaped input.
        beta: weight of the KL term of a variational autoencoder.
        conv_channels: channels of the convolutional encoder's stride-2 layers.
        kernel_size: kernel size of the convolutions (odd).
        layers: per-layer pretraining options of a stacked autoencoder, one per encoder layer
            (``len(hidden_dims) + 1``); ``None`` uses the defaults for every layer.
        num_classes: adds a linear classification head on the code, for supervised
            fine-tuning.
    """

    input_dim: int | None = None
    architecture: str = "mlp"
    hidden_dims: list[int] = field(default_factory=lambda: [128])
    latent_dim: int = 32
    decoder_dims: list[int] | None = None
    activation: str = "relu"
    latent_activation: str = "linear"
    output_activation: str = "identity"
    loss: str = "mse"
    weight_l1: float = 0.0
    weight_l2: float = 0.0
    sparsity: SparsityConfig | None = None
    corruption: CorruptionConfig | None = None
    tv_weight: float = 0.0
    input_shape: list[int] | None = None
    beta: float = 1.0
    conv_channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 3
    layers: list[LayerOptions] | None = None
    num_classes: int | None = None

    _nested = {
        "sparsity": SparsityConfig,
        "corruption": CorruptionConfig,
        "layers": LayerOptions,
    }

    def __post_init__(self) -> None:
        owner = "ModelConfig"
        variant = architecture_class(self.architecture)
        self.hidden_dims = list(self.hidden_dims)
        self.conv_channels = list(self.conv_channels)
        if self.decoder_dims is not None:
            self.decoder_dims = list(self.decoder_dims)
        if self.input_shape is not None:
            self.input_shape = list(self.input_shape)
            _check_positive_ints(owner, "input_shape", self.input_shape, allow_empty=False)
            _require(
                len(self.input_shape) == 3,
                f"{owner}.input_shape must be [channels, height, width], got {self.input_shape}",
            )
            size = math.prod(self.input_shape)
            if self.input_dim is None:
                self.input_dim = size
            _require(
                self.input_dim == size,
                f"{owner}.input_dim={self.input_dim} does not match "
                f"input_shape={self.input_shape} ({size} values)",
            )
        _check_int_at_least(owner, "input_dim", self.input_dim, 1, "the data needs a column")
        _check_positive_ints(owner, "hidden_dims", self.hidden_dims)
        _check_int_at_least(owner, "latent_dim", self.latent_dim, 1)
        if self.decoder_dims is not None:
            _check_positive_ints(owner, "decoder_dims", self.decoder_dims)
        for name in ("activation", "latent_activation", "output_activation"):
            _check_choice(owner, name, getattr(self, name), ACTIVATIONS)
        _require(
            isinstance(self.loss, str) and bool(self.loss),
            f"{owner}.loss must be a loss name, got {self.loss!r}",
        )
        if self.loss == "bce":
            _require(
                self.output_activation == "sigmoid",
                f"{owner}.loss='bce' needs output_activation='sigmoid' "
                f"(got {self.output_activation!r})",
            )
        for name in ("weight_l1", "weight_l2", "tv_weight", "beta"):
            _check_non_negative(owner, name, getattr(self, name))
        if self.tv_weight > 0:
            _require(
                self.input_shape is not None,
                f"{owner}: architecture={self.architecture!r} with tv_weight={self.tv_weight} "
                "needs input_shape=[channels, height, width]",
            )
        for name in _ARCHITECTURE_FIELDS:
            if getattr(self, name) is not None and name not in variant.accepts:
                readers = [a for a, c in _ARCHITECTURE_CLASSES.items() if name in c.accepts]
                _require(
                    False,
                    f"{owner}.{name} is only for architecture "
                    f"{' or '.join(map(repr, readers))}, not {self.architecture!r}",
                )
        if self.sparsity is not None and self.sparsity.kind == "kl":
            _require(
                self.latent_activation == "sigmoid",
                f"{owner}: KL sparsity needs codes in (0, 1): set "
                f"latent_activation='sigmoid' (got {self.latent_activation!r})",
            )
        if self.num_classes is not None:
            _require(
                isinstance(self.num_classes, int) and self.num_classes >= 2,
                f"{owner}.num_classes must be an int >= 2, got {self.num_classes!r}",
            )
        variant.check_config(self)  # the architecture's own checks

    @property
    def variant(self) -> str:
        """A short name of the variant, e.g. ``"undercomplete"``, ``"sparse+denoising"``."""
        base = architecture_class(self.architecture).variant_name(self)
        tags = []
        if self.sparsity is not None:
            tags.append("sparse")
        if self.corruption is not None:
            tags.append("denoising")
        if self.architecture == "mlp" and tags:
            return "+".join(tags)
        return "+".join([base, *tags])

    @property
    def stack_widths(self) -> list[int]:
        """Widths of the encoder's layers, input side first, code last."""
        return [*self.hidden_dims, self.latent_dim]

    def layer_options(self, index: int) -> LayerOptions:
        """Returns the pretraining options of stacked layer ``index`` (defaults if unset)."""
        if self.layers is None:
            return LayerOptions()
        return self.layers[index]

    def encoder_activations(self) -> list[str]:
        """Activation of each encoder layer, input side first (code last)."""
        n = len(self.hidden_dims)
        acts = [self.activation] * n + [self.latent_activation]
        if self.architecture == "stacked":
            acts = [self.layer_options(i).activation or a for i, a in enumerate(acts)]
        return acts

    def layer_output_activation(self, index: int) -> str:
        """Activation of the reconstruction of stacked layer ``index``.

        Layer 0 reconstructs the input (``output_activation``); a deeper layer reconstructs
        the codes of the layer below, so it uses that layer's activation by default. With
        these defaults a stack has the same shape as a mirrored :class:`ModelConfig` MLP.
        """
        explicit = self.layer_options(index).output_activation
        if explicit is not None:
            return explicit
        if index == 0:
            return self.output_activation
        return self.encoder_activations()[index - 1]

    def decoder_widths(self) -> list[int]:
        """Widths of the decoder's hidden layers, code side first."""
        if self.decoder_dims is not None:
            return list(self.decoder_dims)
        return list(reversed(self.hidden_dims))

    def decoder_activations(self) -> list[str]:
        """Activation of each decoder layer, code side first (reconstruction last)."""
        if self.architecture == "stacked":
            n = len(self.hidden_dims) + 1
            return [self.layer_output_activation(i) for i in reversed(range(n))]
        return [self.activation] * len(self.decoder_widths()) + [self.output_activation]

    @classmethod
    def for_variant(
        cls, variant: str, input_dim: int | None = None, **overrides: Any
    ) -> ModelConfig:
        """Returns a config with sensible defaults for a named variant.

        Args:
            variant: one of ``undercomplete``, ``sparse``, ``denoising``, ``stacked``,
                ``variational``, ``convolutional``.
            input_dim: number of input features.
            **overrides: fields that replace the defaults.

        Raises:
            ConfigError: for an unknown variant or field.
        """
        _check_choice("ModelConfig.for_variant", "variant", variant, VARIANTS)
        presets: dict[str, dict[str, Any]] = {
            "undercomplete": {},
            "sparse": {
                "latent_activation": "sigmoid",
                "sparsity": SparsityConfig(),
            },
            "denoising": {"corruption": CorruptionConfig()},
            "stacked": {"architecture": "stacked", "latent_activation": "relu"},
            "variational": {"architecture": "vae"},
            "convolutional": {"architecture": "conv"},
        }
        kwargs: dict[str, Any] = {"input_dim": input_dim, **presets[variant]}
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - valid)
        _require(
            not unknown, f"ModelConfig: unknown key(s) {unknown}; valid keys are {sorted(valid)}"
        )
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "CORRUPTIONS",
    "OPTIMIZERS",
    "SPARSITY_KINDS",
    "VARIANTS",
    "ConfigError",
    "CorruptionConfig",
    "LayerOptions",
    "ModelConfig",
    "SparsityConfig",
    "TrainConfig",
    "architecture_class",
    "architecture_names",
    "register_architecture",
]
