"""One Kafka configuration for both clients, with secrets that never show.

:class:`KafkaConfig` holds what every Kafka connection needs (bootstrap servers, group,
security) under one set of names; each client translates it itself (kafka-python's keyword
arguments: :func:`ae_pipeline.kafka.kafka_python_client.settings`; librdkafka properties:
:func:`ae_pipeline.kafka.confluent_client.settings`; Beam's Java KafkaIO:
:func:`ae_pipeline.beam.kafka_xlang.java_properties`). Client-specific settings pass through
unchanged in the ``kafka_python``, ``confluent`` and ``java`` sections.

Example:
    >>> cfg = KafkaConfig.from_dict({
    ...     "bootstrap.servers": "broker:9093", "group.id": "scorers",
    ...     "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
    ...     "sasl.username": "alice", "sasl.password": "hunter2",
    ...     "confluent": {"fetch.wait.max.ms": 50},
    ... })
    >>> "hunter2" in repr(cfg)
    False
    >>> cfg.sasl_password
    'hunter2'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ae_pipeline.kafka.redaction import redact, secret_values

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")
"""The codecs Kafka allows for record batches; both clients read and write every one."""
DEFAULT_UNREACHABLE_TIMEOUT_S = 60.0

# Accepted spellings (after lower-casing and '.'/'-' -> '_') of each field.
_ALIASES = {
    "bootstrap_servers": "bootstrap_servers",
    "group_id": "group_id",
    "client_id": "client_id",
    "security_protocol": "security_protocol",
    "sasl_mechanism": "sasl_mechanism",
    "sasl_mechanisms": "sasl_mechanism",
    "sasl_username": "sasl_username",
    "sasl_plain_username": "sasl_username",
    "sasl_password": "sasl_password",
    "sasl_plain_password": "sasl_password",
    "ssl_cafile": "ssl_cafile",
    "ssl_ca_location": "ssl_cafile",
    "ssl_certfile": "ssl_certfile",
    "ssl_certificate_location": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
    "ssl_key_location": "ssl_keyfile",
    "ssl_key_password": "ssl_key_password",
    "ssl_password": "ssl_key_password",
    "ssl_check_hostname": "ssl_check_hostname",
    "compression_type": "compression_type",
    "unreachable_timeout_s": "unreachable_timeout_s",
    "kafka_python": "kafka_python",
    "confluent": "confluent",
    "java": "java",
}


@dataclass(frozen=True, repr=False)
class KafkaConfig:
    """Connection settings shared by consumers, producers and admin clients.

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        group_id: consumer group (needed to start from or commit group offsets).
        client_id: client id shown in broker logs and metrics.
        security_protocol: one of :data:`SECURITY_PROTOCOLS`.
        sasl_mechanism: ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``, ... (``PLAIN`` when a
            SASL protocol is set with a username and no mechanism).
        sasl_username: SASL user.
        sasl_password: SASL password (secret: redacted everywhere but in the client).
        ssl_cafile: CA bundle (PEM) to verify the brokers.
        ssl_certfile: client certificate (PEM), for mutual TLS.
        ssl_keyfile: client private key (PEM), for mutual TLS.
        ssl_key_password: password of ``ssl_keyfile`` (secret).
        ssl_check_hostname: verify the broker's host name against its certificate.
        compression_type: how producers compress record batches, one of
            :data:`COMPRESSION_TYPES` (None: the client's default, no compression). Consumers
            read every codec whatever this says.
        unreachable_timeout_s: a consumer that has had no broker connection for this long
            (since it was created, or since its last connection) raises
            :class:`~ae_pipeline.kafka.errors.BrokerUnreachableError` from ``poll`` or
            ``subscribe``.
        kafka_python: extra keyword arguments for kafka-python, passed through.
        confluent: extra librdkafka properties for confluent-kafka, passed through.
        java: extra Java client properties for Beam's cross-language KafkaIO, passed through.
    """

    bootstrap_servers: str
    group_id: str | None = None
    client_id: str = "ae-pipeline"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None
    ssl_check_hostname: bool = True
    compression_type: str | None = None
    unreachable_timeout_s: float = DEFAULT_UNREACHABLE_TIMEOUT_S
    kafka_python: Mapping[str, Any] = field(default_factory=dict)
    confluent: Mapping[str, Any] = field(default_factory=dict)
    java: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ValueError("bootstrap_servers is required")
        protocol = self.security_protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                f"not {self.security_protocol!r}"
            )
        object.__setattr__(self, "security_protocol", protocol)
        if self.uses_sasl:
            if not self.sasl_mechanism and self.sasl_username:
                object.__setattr__(self, "sasl_mechanism", "PLAIN")
            if not self.sasl_mechanism:
                raise ValueError(f"{protocol} needs sasl_mechanism (and usually a username)")
        if self.sasl_password and not self.sasl_username:
            raise ValueError("sasl_password is set without sasl_username")
        if self.compression_type is not None:
            codec = str(self.compression_type).lower()
            if codec not in COMPRESSION_TYPES:
                raise ValueError(
                    f"compression_type must be one of {', '.join(COMPRESSION_TYPES)}, "
                    f"not {self.compression_type!r}"
                )
            object.__setattr__(self, "compression_type", codec)
        timeout = self.unreachable_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"unreachable_timeout_s must be a number > 0, not {timeout!r}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | KafkaConfig) -> KafkaConfig:
        """Build from one dict in Kafka (``sasl.password``), kafka-python (``sasl_plain_password``)
        or field (``sasl_password``) spelling.

        Raises:
            ValueError: for unknown keys (named, values never shown) or invalid settings.
        """
        if isinstance(config, KafkaConfig):
            return config
        fields: dict[str, Any] = {}
        unknown = []
        for key, value in config.items():
            name = _ALIASES.get(key.lower().replace(".", "_").replace("-", "_"))
            if name is None:
                unknown.append(key)
            else:
                fields[name] = value
        if unknown:
            raise ValueError(
                f"unknown Kafka config keys {sorted(unknown)}; put client-specific settings in "
                "the 'kafka_python', 'confluent' or 'java' section"
            )
        return cls(**fields)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def with_group(self, group_id: str | None) -> KafkaConfig:
        """A copy with another consumer group."""
        return dataclasses.replace(self, group_id=group_id)

    def with_unreachable_timeout(self, seconds: float) -> KafkaConfig:
        """A copy whose clients give up on an unreachable broker after ``seconds``."""
        return dataclasses.replace(self, unreachable_timeout_s=seconds)

    def to_dict(self) -> dict[str, Any]:
        """All fields by name, secrets included (use :meth:`redacted` to show it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with every secret masked."""
        return redact(self.to_dict())

    def secrets(self) -> list[str]:
        """Every secret value of this config, for scrubbing error messages."""
        return secret_values(self.to_dict())

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.redacted().items() if v not in (None, {}, "")}
        return "KafkaConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    __str__ = __repr__
