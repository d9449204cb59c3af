"""The Kafka clients ae-pipeline knows: one registration per client module.

A registration names the client, the module that implements it (imported only when the client
is used: confluent-kafka is an optional extra), the :class:`~ae_pipeline.kafka.KafkaConfig`
section whose settings pass through to that client alone, and what the module provides here.
``kafka/config.py`` reads the section names from this table (without importing any client
library) and ``kafka/client.py`` the modules; neither branches on a client's name.

Every client module translates a config itself: ``settings(config)``. An in-process client's
module also has ``Consumer``, ``Producer``, ``create_topics`` and ``PRODUCER_LIMIT`` (it is a
``--client`` choice); the Java client only translates (it runs in Beam's expansion service and
the runner's Java workers, fed by ``ae_pipeline.beam.kafka_xlang``).

Example:
    >>> entry = find("confluent")
    >>> entry.module, entry.section, entry.in_process
    ('ae_pipeline.kafka.confluent_client', 'confluent', True)
    >>> "java" in sections(), "java" in in_process_clients()
    (True, False)
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ae_pipeline.kafka.config import KafkaConfig

_SECTION_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class ClientEntry:
    """One registered client.

    Attributes:
        name: how callers choose it (``--client``, ``create_consumer(client=...)``).
        module: the dotted name of its module.
        section: its pass-through section of :class:`~ae_pipeline.kafka.KafkaConfig` (settings
            given to this client alone, after its translation of the shared fields).
        in_process: True when the module has ``Consumer``, ``Producer``, ``create_topics``
            and ``PRODUCER_LIMIT``; False when it only translates (``settings``).
    """

    name: str
    module: str
    section: str
    in_process: bool = True


_REGISTRY: dict[str, ClientEntry] = {}


def register_client(entry: ClientEntry) -> ClientEntry:
    """Adds a client (a name and a section used by no other client).

    Raises:
        ValueError: for a name or section already taken, or a section that is not a
            lower-case identifier.
    """
    if not _SECTION_NAME.fullmatch(entry.section):
        raise ValueError(f"a client section is a lower-case identifier, not {entry.section!r}")
    for other in _REGISTRY.values():
        if entry.name == other.name or entry.section == other.section:
            raise ValueError(f"{entry} clashes with the registered {other}")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_client(name: str) -> None:
    """Removes a client (for tests that register one of their own)."""
    _REGISTRY.pop(name, None)


def registered() -> tuple[ClientEntry, ...]:
    """Every registered client, in registration order."""
    return tuple(_REGISTRY.values())


def sections() -> tuple[str, ...]:
    """The pass-through section names of every registered client."""
    return tuple(entry.section for entry in _REGISTRY.values())


def in_process_clients() -> tuple[str, ...]:
    """The names of the clients with a consumer and a producer in this process."""
    return tuple(entry.name for entry in _REGISTRY.values() if entry.in_process)


def find(name: str) -> ClientEntry:
    """The registered client called ``name``.

    Raises:
        ValueError: for an unknown name, naming the registered ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown Kafka client {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def load(name: str) -> ModuleType:
    """The module of the registered client ``name`` (imported now).

    Raises:
        ValueError: for an unknown name.
        ImportError: when the client's package is missing (its module names the extra).
    """
    return importlib.import_module(find(name).module)


def settings(config: KafkaConfig, name: str) -> dict[str, Any]:
    """Client ``name``'s own translation of ``config``: its module's ``settings``."""
    return load(name).settings(config)


register_client(
    ClientEntry("kafka-python", "ae_pipeline.kafka.kafka_python_client", "kafka_python")
)
register_client(ClientEntry("confluent", "ae_pipeline.kafka.confluent_client", "confluent"))
register_client(
    ClientEntry("java", "ae_pipeline.kafka.java_client", "java", in_process=False),
)
