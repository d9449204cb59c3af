"""One Kafka configuration for every client, with secrets that never show.

:class:`KafkaConfig` holds what every Kafka connection needs (bootstrap servers, group,
security) under one set of names; each client translates it itself (kafka-python's keyword
arguments: :func:`ae_pipeline.kafka.kafka_python_client.settings`; librdkafka properties:
:func:`ae_pipeline.kafka.confluent_client.settings`; Beam's Java KafkaIO:
:func:`ae_pipeline.kafka.java_client.settings`). Client-specific settings pass through
unchanged, to that client alone, in its section: one per client registered in
:mod:`ae_pipeline.kafka.clients` (``kafka_python``, ``confluent``, ``java``).

Example:
    >>> cfg = KafkaConfig.from_dict({
    ...     "bootstrap.servers": "broker:9093", "group.id": "scorers",
    ...     "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
    ...     "sasl.username": "alice", "sasl.password": "hunter2",
    ...     "confluent": {"fetch.wait.max.ms": 50, "sasl.oauthbearer.client.secret": "s3"},
    ... })
    >>> "hunter2" in repr(cfg) or "s3" in repr(cfg)
    False
    >>> cfg.sasl_password
    'hunter2'
    >>> cfg.section("confluent")["fetch.wait.max.ms"], cfg.section("java")
    (50, {})
    >>> KafkaConfig.from_dict({"bootstrap.servers": "b:1", "rdkafka": {"linger.ms": 5}})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: unknown Kafka client section 'rdkafka'; the sections are kafka_python, confluent...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ae_pipeline.kafka.clients as clients
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
}


@dataclass(frozen=True, repr=False, init=False)
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
        sections: ``{section: {setting: value}}``, client-specific settings passed through
            unchanged to that client alone (after its translation of the fields above).
        **named_sections: the same, one keyword per section: ``kafka_python`` (extra keyword
            arguments for kafka-python), ``confluent`` (extra librdkafka properties),
            ``java`` (extra Java client properties for Beam's cross-language KafkaIO); a
            section's name is its client's registration (:mod:`ae_pipeline.kafka.clients`).
            Read one with :meth:`section` (or as an attribute: ``config.confluent``).

    Raises:
        ValueError: for invalid settings, or a section no client has registered (the error
            names the sections; a value is never shown).
        TypeError: for a keyword that is neither a field nor a section (a mapping).
    """

    bootstrap_servers: str
    group_id: str | None
    client_id: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_key_password: str | None
    ssl_check_hostname: bool
    compression_type: str | None
    unreachable_timeout_s: float
    sections: Mapping[str, Mapping[str, Any]]
    """The non-empty pass-through sections, by name."""

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str | None = None,
        client_id: str = "ae-pipeline",
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        ssl_cafile: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_key_password: str | None = None,
        ssl_check_hostname: bool = True,
        compression_type: str | None = None,
        unreachable_timeout_s: float = DEFAULT_UNREACHABLE_TIMEOUT_S,
        *,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        **named_sections: Mapping[str, Any],
    ) -> None:
        for name, value in named_sections.items():
            if not isinstance(value, Mapping) and name not in clients.sections():
                raise TypeError(f"KafkaConfig() got an unexpected keyword argument {name!r}")
        set_ = object.__setattr__  # frozen: fields are set once, here
        set_(self, "bootstrap_servers", bootstrap_servers)
        set_(self, "group_id", group_id)
        set_(self, "client_id", client_id)
        set_(self, "security_protocol", security_protocol)
        set_(self, "sasl_mechanism", sasl_mechanism)
        set_(self, "sasl_username", sasl_username)
        set_(self, "sasl_password", sasl_password)
        set_(self, "ssl_cafile", ssl_cafile)
        set_(self, "ssl_certfile", ssl_certfile)
        set_(self, "ssl_keyfile", ssl_keyfile)
        set_(self, "ssl_key_password", ssl_key_password)
        set_(self, "ssl_check_hostname", ssl_check_hostname)
        set_(self, "compression_type", compression_type)
        set_(self, "unreachable_timeout_s", unreachable_timeout_s)
        set_(self, "sections", _checked_sections({**(sections or {}), **named_sections}))
        self._check()

    def _check(self) -> None:
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
        or field (``sasl_password``) spelling, with client sections under their names
        (``"confluent": {...}``).

        Raises:
            ValueError: for unknown keys or sections (named, values never shown) or invalid
                settings.
        """
        if isinstance(config, KafkaConfig):
            return config
        fields: dict[str, Any] = {}
        named_sections: dict[str, Any] = {}
        unknown = []
        known_sections = clients.sections()
        for key, value in config.items():
            spelled = key.lower().replace(".", "_").replace("-", "_")
            name = _ALIASES.get(spelled)
            if name is not None:
                fields[name] = value
            elif spelled in known_sections or isinstance(value, Mapping):
                named_sections[spelled] = value  # an unknown one is refused with the others
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"unknown Kafka config keys {sorted(unknown)}; put client-specific settings in "
                f"a client's section ({', '.join(known_sections)})"
            )
        return cls(**fields, sections=named_sections)

    def section(self, name: str) -> Mapping[str, Any]:
        """The settings of section ``name`` (empty when the config has none).

        Raises:
            ValueError: when no registered client has a section called ``name``.
        """
        if name not in self.sections and name not in clients.sections():
            raise ValueError(_unknown_section(name))
        return self.sections.get(name, {})

    def __getattr__(self, name: str) -> Mapping[str, Any]:
        # Only for names that are not attributes: a registered section (config.confluent).
        if name.startswith("_") or name not in clients.sections():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.section(name)

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
        """All fields by name, then every registered section by name (empty ones too), secrets
        included (use :meth:`redacted` to show it); :meth:`from_dict` reads it back."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del shared["sections"]
        names = dict.fromkeys([*clients.sections(), *self.sections])
        return {**shared, **{name: self.sections.get(name, {}) for name in names}}

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with every secret masked (in the sections too)."""
        return redact(self.to_dict())

    def secrets(self) -> list[str]:
        """Every secret value of this config (in the sections too), for scrubbing error
        messages."""
        return secret_values(self.to_dict())

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.redacted().items() if v not in (None, {}, "")}
        return "KafkaConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    __str__ = __repr__


def _unknown_section(name: str) -> str:
    return (
        f"unknown Kafka client section {name!r}; the sections are {', '.join(clients.sections())}"
    )


def _checked_sections(given: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The non-empty sections, each a plain dict with string keys.

    Raises:
        ValueError: for a section that no registered client has (naming the known ones), or
            one that is not a mapping of settings.
    """
    known = clients.sections()
    checked: dict[str, dict[str, Any]] = {}
    for name, settings in given.items():
        if name not in known:
            raise ValueError(_unknown_section(name))
        if not isinstance(settings, Mapping) or not all(isinstance(k, str) for k in settings):
            raise ValueError(
                f"the {name!r} section is a mapping of setting names to values, "
                f"not a {type(settings).__name__}"
            )
        if settings:
            checked[name] = dict(settings)
    return checked
