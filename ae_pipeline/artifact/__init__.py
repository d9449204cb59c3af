"""The model artifact: one directory per model version, saved and loaded safely
(:mod:`.files`: the format, save and load; :mod:`.storage`: reading and writing through Beam's
``FileSystems``; :mod:`.servable`: whether a version can serve; :mod:`.errors`: refusals).

A version directory holds

* ``weights.safetensors``: the model's tensors (safetensors: loading never runs code);
* ``config.json``: model config, train config, variant, feature columns, scaler and
  threshold (opaque dicts owned by their layers), metrics, data fingerprint, library versions
  and the name, shape and dtype of every tensor;
* ``checksums.json``: the SHA-256 of the two files above, written last.

All I/O goes through ``apache_beam.io.filesystems.FileSystems`` (imported lazily, so that this
module and ``ae_pipeline.models`` import without Beam), so local paths, ``gs://`` and
``s3://`` work alike. :func:`save_artifact` writes into the directory it is given and nothing
else: publishing a version atomically (temporary name, then visible) is the caller's job.
:func:`load_artifact` verifies checksums, the safetensors header, and that every tensor the
config implies is present with the right shape, and raises :class:`ArtifactError` naming the
first mismatch otherwise. No pickle, no ``torch.load``, anywhere.

Example:
    >>> import tempfile
    >>> from ae_pipeline.models import ModelConfig, build_model
    >>> cfg = ModelConfig(4, hidden_dims=[], latent_dim=2)
    >>> path = save_artifact(tempfile.mkdtemp(), build_model(cfg, seed=0), cfg)
    >>> load_artifact(path).model.latent_dim
    2
"""

from ae_pipeline.artifact.errors import (
    REFUSAL_REASONS,
    ArtifactError,
)
from ae_pipeline.artifact.files import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    MIN_SCALE,
    WEIGHTS_FILE,
    LoadedArtifact,
    check_compatibility,
    load_artifact,
    save_artifact,
    verify_artifact,
)
from ae_pipeline.artifact.servable import (
    SERVING_NEEDS,
    check_servable,
    features_of,
    verify_servable,
)
from ae_pipeline.artifact.storage import (
    data_fingerprint,
    library_versions,
    refuse_links,
)

__all__ = [
    "CHECKSUMS_FILE",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "MIN_SCALE",
    "REFUSAL_REASONS",
    "SERVING_NEEDS",
    "WEIGHTS_FILE",
    "ArtifactError",
    "LoadedArtifact",
    "check_compatibility",
    "check_servable",
    "data_fingerprint",
    "features_of",
    "library_versions",
    "load_artifact",
    "refuse_links",
    "save_artifact",
    "verify_artifact",
    "verify_servable",
]
