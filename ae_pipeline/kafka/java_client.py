"""The Java Kafka client's translation of a :class:`~ae_pipeline.kafka.KafkaConfig`: the
properties that Beam's cross-language KafkaIO (:mod:`ae_pipeline.beam.kafka_xlang`) gives the
Java consumer and producer.

No consumer or producer here: the Java client runs in Beam's expansion service and the
runner's Java workers, so this module only translates (registered with ``in_process=False``
in :mod:`ae_pipeline.kafka.clients`). Its pass-through section is ``java``.

Example:
    >>> from ae_pipeline.kafka import KafkaConfig
    >>> props = settings(KafkaConfig(
    ...     "broker:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
    ...     sasl_username="alice", sasl_password="hunter2", java={"max.poll.records": 100},
    ... ))
    >>> props["sasl.jaas.config"].split(" required ")[0]
    'org.apache.kafka.common.security.scram.ScramLoginModule'
    >>> props["max.poll.records"]
    '100'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ae_pipeline.kafka.config import KafkaConfig

SECTION = "java"
"""This client's pass-through section of ``KafkaConfig`` (as registered)."""

_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def settings(config: KafkaConfig) -> dict[str, str]:
    """The Java Kafka client's properties for ``config``, the ``java`` section last (values as
    strings).

    Raises:
        ValueError: for mutual TLS with separate certificate and key files (Java reads one
            PEM key store; pass ``ssl.keystore.*`` in the ``java`` section instead).
    """
    props = {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": config.client_id,
        "security.protocol": config.security_protocol,
    }
    if config.group_id is not None:
        props["group.id"] = config.group_id
    if config.uses_sasl:
        props["sasl.mechanism"] = config.sasl_mechanism or ""
        module = _JAAS_MODULES.get(config.sasl_mechanism or "")
        if module and config.sasl_username is not None:
            props["sasl.jaas.config"] = (
                f'{module} required username="{config.sasl_username}" '
                f'password="{config.sasl_password or ""}";'
            )
    if config.uses_ssl:
        if not config.ssl_check_hostname:
            props["ssl.endpoint.identification.algorithm"] = ""
        if config.ssl_cafile:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = config.ssl_cafile
        if config.ssl_certfile or config.ssl_keyfile:
            if config.ssl_certfile != config.ssl_keyfile:
                raise ValueError(
                    "Java KafkaIO reads the client certificate and key from one PEM file; "
                    "set ssl_certfile == ssl_keyfile or pass ssl.keystore.* in 'java'"
                )
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.location"] = config.ssl_certfile or ""
            if config.ssl_key_password:
                props["ssl.key.password"] = config.ssl_key_password
    if config.compression_type is not None:
        props["compression.type"] = config.compression_type
    props.update({k: str(v) for k, v in config.section(SECTION).items()})
    return props
