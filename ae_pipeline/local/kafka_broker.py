"""A real single-node Apache Kafka broker (KRaft mode) on 127.0.0.1, for tests and the demo.

The broker's jars come from Maven (``deploy/local/kafka/pom.xml``, resolved by ``make setup``);
this module writes a ``server.properties``, formats the log directory and starts
``kafka.Kafka`` with Java, on free ports, and waits until the broker answers a metadata request.
Its log is kept under ``logs/`` for debugging.

Example:
    >>> with KafkaBroker() as broker:                       # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123

Command line: ``python -m ae_pipeline.local.kafka_broker start|stop|status``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ae_pipeline.local.paths import classpath, logs_dir

STATE_FILE = "kafka-broker.json"


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kafka_uuid() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaBroker:
    """A Kafka broker process.

    Args:
        port: client port (free one if 0).
        data_dir: log directory (a temporary one if None, removed on stop).
        extra_config: extra ``server.properties`` entries (e.g. SASL listeners).
        java: the Java executable.
        startup_timeout: seconds to wait for the broker to answer.
    """

    port: int = 0
    data_dir: Path | None = None
    extra_config: dict[str, str] = field(default_factory=dict)
    java: str = "java"
    startup_timeout: float = 60.0
    heap: str = "512m"

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.controller_port = free_port()
        self._own_dir = self.data_dir is None
        self.data_dir = Path(self.data_dir or tempfile.mkdtemp(prefix="ae-kafka-"))
        self.log_path = logs_dir() / f"kafka-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0
        self.started_in: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "24",
        }
        props.update(self.extra_config)
        return props

    def add_sasl_plain_listener(self, users: dict[str, str]) -> str:
        """Add a SASL_PLAINTEXT (PLAIN) listener beside the PLAINTEXT one, before ``start``.

        Args:
            users: user name -> password accepted by the listener.

        Returns:
            The listener's bootstrap address (also kept as ``sasl_bootstrap``).
        """
        sasl_port = free_port()
        jaas_users = " ".join(f'user_{name}="{pw}"' for name, pw in users.items())
        self.extra_config.update(
            {
                "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                f"SASL_PLAINTEXT://127.0.0.1:{sasl_port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
                "SASL_PLAINTEXT:SASL_PLAINTEXT",
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f"{jaas_users};"
                ),
            }
        )
        self.sasl_bootstrap = f"127.0.0.1:{sasl_port}"
        return self.sasl_bootstrap

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        log4j = self.data_dir / "log4j2.properties"
        return [
            self.java,
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xshare:auto",
            f"-Dlog4j2.configurationFile={log4j}",
            "-Dkafka.logs.dir=" + str(self.data_dir),
            "-cp",
            classpath("kafka"),
            main,
            *args,
        ]

    def start(self) -> KafkaBroker:
        """Format the storage and start the broker; wait until it answers.

        Raises:
            BrokerStartError: with the log tail, if it exits or does not answer in time.
        """
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self._properties().items()))
        (self.data_dir / "log4j2.properties").write_text(
            "rootLogger.level=INFO\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
            "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
            "appender.stdout.layout.type=PatternLayout\n"
            "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
        )
        meta = self.data_dir / "logs" / "meta.properties"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"=== starting broker on {self.bootstrap_servers}\n".encode())
            log.flush()
            if not meta.exists():
                fmt = subprocess.run(
                    self._java_cmd(
                        "kafka.tools.StorageTool",
                        "format",
                        # "=" form: a generated id may start with "-".
                        f"--cluster-id={_kafka_uuid()}",
                        "-c",
                        str(config),
                        "--ignore-formatted",
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                )
                if fmt.returncode != 0:
                    raise BrokerStartError(
                        f"kafka storage format failed (exit {fmt.returncode}):\n{self.log_tail()}"
                    )
            self.proc = subprocess.Popen(
                self._java_cmd("kafka.Kafka", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(t0)
        self.started_in = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerStartError(
                    f"Kafka broker exited with code {self.proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._answers():
                return
            time.sleep(0.25)
        self.stop()
        raise BrokerStartError(
            f"Kafka broker did not answer on {self.bootstrap_servers} within "
            f"{self.startup_timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        # The port opens before the broker has registered with its controller: wait for the
        # server's own "started" line in this start's part of the log.
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return b"Kafka Server started (kafka.server.KafkaRaftServer)" in log.read()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        """SIGKILL the broker (for crash tests); its data directory stays for a restart."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, remove_data: bool | None = None) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 20 s); remove a temporary data dir."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.proc = None
        if remove_data if remove_data is not None else self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self) -> KafkaBroker:
        """Stop and start again on the same ports and data (a broker restart)."""
        self.stop(remove_data=False)
        return self.start()

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _state_path() -> Path:
    return logs_dir() / STATE_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local Kafka broker for development.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=9092)
    args = parser.parse_args(argv)
    state = _state_path()
    if args.action == "start":
        data = logs_dir() / "kafka-data"
        broker = KafkaBroker(port=args.port, data_dir=data).start()
        state.write_text(
            json.dumps({"pid": broker.proc.pid, "bootstrap": broker.bootstrap_servers})
        )
        print(f"Kafka broker up at {broker.bootstrap_servers} in {broker.started_in:.1f}s")
        print(f"log: {broker.log_path}; stop with `make kafka-down`")
        return 0
    if not state.exists():
        print("no local broker recorded")
        return 0 if args.action == "status" else 1
    info = json.loads(state.read_text())
    if args.action == "status":
        print(info)
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info["pid"], signal.SIGTERM)
    state.unlink()
    print(f"stopped broker {info['bootstrap']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
