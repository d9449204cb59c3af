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

Size (over 500 lines): test and demo infrastructure (never imported by the library):
download-free broker start, stop, kill and restart on the same data, SASL and TLS set-ups.
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


COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
"""What Kafka's producers may compress record batches with (``compression.type``)."""


def console_produce(
    bootstrap_servers: str,
    topic: str,
    lines: list[str],
    *,
    compression: str = "none",
    key_separator: str | None = None,
    java: str = "java",
    timeout_s: float = 180.0,
) -> None:
    """Write ``lines`` to ``topic`` with Kafka's own console producer
    (``org.apache.kafka.tools.ConsoleProducer``, i.e. ``kafka-console-producer``), one record
    per line, in record batches compressed with ``compression``, acknowledged by all replicas.

    Args:
        lines: record values (no newlines); with ``key_separator``, ``key<sep>value``.
        compression: one of :data:`COMPRESSION_CODECS`.

    Raises:
        ValueError: for an unknown codec or a line holding a newline.
        RuntimeError: when the producer exits non-zero (with the tail of its output).
        ae_pipeline.local.paths.LocalToolMissing: without the ``kafka_tools`` classpath.
    """
    if compression not in COMPRESSION_CODECS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSION_CODECS)}")
    if any("\n" in line for line in lines):
        raise ValueError("the console producer writes one record per line: no newlines")
    args = ["--bootstrap-server", bootstrap_servers, "--topic", topic]
    args += ["--compression-codec", compression, "--producer-property", "acks=all"]
    if key_separator is not None:
        args += ["--property", "parse.key=true", "--property", f"key.separator={key_separator}"]
    cmd = [java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
    cmd += ["-cp", classpath("kafka_tools"), "org.apache.kafka.tools.ConsoleProducer", *args]
    done = subprocess.run(
        cmd,
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-2000:]
        raise RuntimeError(f"kafka-console-producer exited {done.returncode}: {output}")


def _kafka_uuid() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass(frozen=True)
class BrokerCertificates:
    """A test certificate authority and a broker certificate signed by it.

    Attributes:
        ca_pem: the CA certificate (PEM): what clients trust (``ssl_cafile``).
        broker_properties: ``server.properties`` entries of the broker's key store.
    """

    ca_pem: Path
    broker_properties: dict[str, str]


_CERT_DAYS = "7"
_BROKER_SAN = "IP:127.0.0.1,DNS:localhost"


def _run_tool(*args: str | Path) -> None:
    args = tuple(map(str, args))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:  # the commands carry only generated test passwords
        raise RuntimeError(f"{args[0]} {args[1]} failed ({done.returncode}): {done.stderr[-2000:]}")


def make_test_certificates(folder: Path, tool: str | None = None) -> BrokerCertificates:
    """Make a fresh CA and a broker certificate for 127.0.0.1/localhost in ``folder``.

    Args:
        folder: where the files go (created).
        tool: ``"openssl"`` or ``"keytool"`` (default: openssl if on PATH, else keytool, which
            every Java has).

    Raises:
        RuntimeError: when neither tool is found or one fails.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tool = tool or ("openssl" if shutil.which("openssl") else "keytool")
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is not on PATH: cannot make test certificates")
    if tool == "openssl":
        return _openssl_certificates(folder)
    if tool == "keytool":
        return _keytool_certificates(folder)
    raise ValueError(f"tool must be 'openssl' or 'keytool', not {tool!r}")


def _openssl_certificates(folder: Path) -> BrokerCertificates:
    ca_key, ca_pem = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "broker.key", folder / "broker.csr", folder / "broker.pem"
    ext = folder / "broker.ext"
    ext.write_text(
        f"subjectAltName={_BROKER_SAN}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    ca_name = f"/CN=ae-pipeline test CA {uuid.uuid4().hex[:8]}"
    new_key = ("-newkey", "rsa:2048", "-nodes", "-keyout")  # RSA, unencrypted PKCS#8
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE")
    ca_ext += ("-addext", "keyUsage=critical,keyCertSign,cRLSign")
    days = ("-days", _CERT_DAYS)
    ca_req = ("-x509", "-subj", ca_name, *days, *ca_ext)
    _run_tool("openssl", "req", *ca_req, *new_key, ca_key, "-out", ca_pem)
    _run_tool("openssl", "req", *new_key, key, "-out", csr, "-subj", "/CN=localhost")
    signer = ("-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial")
    _run_tool("openssl", "x509", "-req", "-in", csr, *signer, "-out", cert, *days, "-extfile", ext)
    # Kafka's PEM key store: the (unencrypted PKCS#8) key, then the certificate chain.
    store = folder / "broker-keystore.pem"
    store.write_text(key.read_text() + cert.read_text() + ca_pem.read_text())
    store.chmod(0o600)
    return BrokerCertificates(
        ca_pem, {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(store)}
    )


def _keytool_certificates(folder: Path) -> BrokerCertificates:
    password = uuid.uuid4().hex  # a throwaway test key store's password
    ca_store, store = folder / "ca.p12", folder / "broker.p12"
    ca_pem, csr, cert = folder / "ca.pem", folder / "broker.csr", folder / "broker.pem"

    def keytool(command: str, keystore: Path, *args: str | Path) -> None:
        _run_tool("keytool", command, "-keystore", keystore, "-storepass", password, *args)

    def new_key(keystore: Path, alias: str, name: str, *args: str) -> None:
        keytool("-genkeypair", keystore, "-alias", alias, "-dname", name, *args)

    lasting = ("-keyalg", "RSA", "-keysize", "2048", "-validity", _CERT_DAYS)
    new_key(
        ca_store, "ca", f"CN=ae-pipeline test CA {uuid.uuid4().hex[:8]}", "-ext", "bc:c", *lasting
    )
    keytool("-exportcert", ca_store, "-rfc", "-alias", "ca", "-file", ca_pem)
    new_key(store, "broker", "CN=localhost", *lasting)
    keytool("-certreq", store, "-alias", "broker", "-file", csr)
    sign = ("-ext", f"SAN={_BROKER_SAN}", "-ext", "EKU=serverAuth", "-validity", _CERT_DAYS)
    keytool("-gencert", ca_store, "-alias", "ca", "-rfc", *sign, "-infile", csr, "-outfile", cert)
    for alias, path in (("ca", ca_pem), ("broker", cert)):
        keytool("-importcert", store, "-noprompt", "-alias", alias, "-file", path)
    return BrokerCertificates(
        ca_pem,
        {
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(store),
            "ssl.keystore.password": password,
            "ssl.key.password": password,
        },
    )


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
        # Client listeners beside PLAINTEXT (name = security protocol -> port), and their
        # server.properties entries; added by add_sasl_plain_listener / add_ssl_listener.
        self._listeners: dict[str, int] = {"PLAINTEXT": self.port}
        self._listener_config: dict[str, str] = {}
        self._sasl_users: dict[str, str] = {}

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> dict[str, str]:
        advertised = ",".join(
            f"{name}://127.0.0.1:{port}" for name, port in self._listeners.items()
        )
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                f"{name}:{name}" for name in ["CONTROLLER", *self._listeners]
            ).replace("CONTROLLER:CONTROLLER", "CONTROLLER:PLAINTEXT"),
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
        props.update(self._listener_config)
        props.update(self.extra_config)
        return props

    def _add_listener(self, protocol: str) -> str:
        if protocol in self._listeners:
            raise ValueError(f"the broker already has a {protocol} listener")
        port = free_port()
        self._listeners[protocol] = port
        return f"127.0.0.1:{port}"

    def _add_sasl_users(self, protocol: str, users: dict[str, str]) -> None:
        self._sasl_users.update(users)
        jaas_users = " ".join(f'user_{name}="{pw}"' for name, pw in users.items())
        self._listener_config.update(
            {
                "sasl.enabled.mechanisms": "PLAIN",
                f"listener.name.{protocol.lower()}.plain.sasl.jaas.config": (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f"{jaas_users};"
                ),
            }
        )

    def add_sasl_plain_listener(self, users: dict[str, str]) -> str:
        """Add a SASL_PLAINTEXT (PLAIN) listener beside the PLAINTEXT one, before ``start``.

        Args:
            users: user name -> password accepted by the listener.

        Returns:
            The listener's bootstrap address (also kept as ``sasl_bootstrap``).
        """
        self.sasl_bootstrap = self._add_listener("SASL_PLAINTEXT")
        self._add_sasl_users("SASL_PLAINTEXT", users)
        return self.sasl_bootstrap

    def add_ssl_listener(self, sasl_users: dict[str, str] | None = None) -> str:
        """Add an SSL listener (and with ``sasl_users`` a SASL_SSL PLAIN one), before ``start``.

        A test certificate authority and the broker's certificate (for 127.0.0.1 and
        localhost) are made here with ``openssl`` (or Java's ``keytool``), in the data
        directory; clients verify the broker with ``ssl_cafile`` (the CA, PEM). Nothing is
        downloaded.

        Args:
            sasl_users: user name -> password for a SASL_SSL listener (none without).

        Returns:
            The SSL listener's bootstrap address (also kept as ``ssl_bootstrap``; the SASL_SSL
            one, if any, as ``sasl_ssl_bootstrap``).
        """
        certs = make_test_certificates(self.data_dir / "tls")
        self.ssl_cafile = str(certs.ca_pem)
        self.ssl_bootstrap = self._add_listener("SSL")
        self._listener_config.update(certs.broker_properties)
        if sasl_users:
            self.sasl_ssl_bootstrap = self._add_listener("SASL_SSL")
            self._add_sasl_users("SASL_SSL", sasl_users)
        return self.ssl_bootstrap

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

    def batch_codecs(self, *topics: str) -> dict[str, dict[str, int]]:
        """How many record batches of each topic (all partitions) the broker stored with each
        compression codec (``{"t": {"lz4": 3}}``), read from its log segments with Kafka's
        ``DumpLogSegments`` (one Java run for all topics): what producers really sent,
        whatever their settings said."""
        logs = self.data_dir / "logs"
        segments: dict[str, str] = {}  # segment file -> topic
        for topic in topics:
            for folder in logs.glob(f"{topic}-*"):
                if folder.name.rsplit("-", 1)[0] == topic:
                    segments.update({str(f): topic for f in folder.glob("*.log")})
        found: dict[str, dict[str, int]] = {topic: {} for topic in topics}
        if not segments:
            return found
        done = subprocess.run(
            self._java_cmd("kafka.tools.DumpLogSegments", "--files", ",".join(sorted(segments))),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"DumpLogSegments exited {done.returncode}: {done.stderr[-2000:]}")
        topic = None
        for line in done.stdout.splitlines():
            if line.startswith("Dumping "):
                topic = segments.get(line[len("Dumping ") :].strip())
            elif topic and line.startswith("baseOffset:") and " compresscodec: " in line:
                codec = line.split(" compresscodec: ", 1)[1].split()[0].lower()
                found[topic][codec] = found[topic].get(codec, 0) + 1
        return found

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
