"""Beam's cross-language Java transforms here, without Docker: the expansion service started
from the local classpath (``deploy/local/expansion``, fetched by ``make setup``) and a local
Java SDK worker pool for their ``EXTERNAL`` environment.

For tests and local runs; production pipelines give :func:`ae_pipeline.beam.kafka_xlang.java_read`
/ ``java_write`` their own expansion service (Beam's default, or one started next to the
runner).

Example:
    >>> with JavaWorkerPool() as pool:                                  # doctest: +SKIP
    ...     service = java_expansion_service(pool.address)
    ...     p | java_read("events", {"bootstrap.servers": "127.0.0.1:9092"}, service)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from ae_pipeline.local.kafka_broker import free_port
from ae_pipeline.local.paths import (
    LocalToolMissing,
    classpath,
    classpath_dir,
    launcher_jar,
    logs_dir,
)

# Jars the Java SDK harness needs beyond the expansion service's classpath: jamm is a
# "provided" dependency of beam-sdks-java-harness (NoClassDefFoundError without it), and
# slf4j-api 2.x lets the classpath's slf4j-jdk14 2.x binding log (1.7.30 there makes it NOP).
_HARNESS_EXTRAS = {
    "jamm-0.4.0.jar": "com/github/jbellis/jamm/0.4.0",
    "slf4j-api-2.0.16.jar": "org/slf4j/slf4j-api/2.0.16",
}


def _harness_extra_jars() -> list[str]:
    m2 = Path(os.environ.get("MAVEN_REPOSITORY", Path.home() / ".m2" / "repository"))
    found = []
    for name, folder in _HARNESS_EXTRAS.items():
        candidates = [classpath_dir("expansion") / "lib" / name, m2 / folder / name]
        jar = next((c for c in candidates if c.exists()), None)
        if jar is None and name.startswith("jamm"):
            raise LocalToolMissing(
                f"{name} is needed by the Java SDK harness; run `mvn dependency:get "
                "-Dartifact=com.github.jbellis:jamm:0.4.0` (or add it to "
                "deploy/local/expansion/pom.xml)"
            )
        if jar is not None:
            found.append(str(jar))
    return found


class JavaWorkerPool:
    """A local Java SDK worker pool for the ``EXTERNAL`` environment of Java transforms.

    Cross-language transforms run in a Java SDK harness; runners start it in Docker unless
    the environment is ``EXTERNAL``. This starts Beam's ``ExternalWorkerService`` from the
    expansion service's classpath (which holds KafkaIO and the Kafka client), so that Prism
    and Flink can run Java KafkaIO here without Docker.

    Example:
        >>> with JavaWorkerPool() as pool:                              # doctest: +SKIP
        ...     service = java_expansion_service(pool.address)
    """

    def __init__(self, startup_timeout_s: float = 60.0):
        self.startup_timeout_s = startup_timeout_s
        self.address: str | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> JavaWorkerPool:
        """Start the pool and wait until it accepts connections.

        Raises:
            ae_pipeline.local.paths.LocalToolMissing: without the classpath or jamm.
            RuntimeError: when the pool exits or does not listen in time.
        """
        port = free_port()
        self.address = f"localhost:{port}"
        options = {"options": {"environmentOptions": [f"external_service_address={self.address}"]}}
        self.log_path = logs_dir() / f"java-worker-pool-{port}.log"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    "java",
                    "-cp",
                    os.pathsep.join([*_harness_extra_jars(), classpath("expansion")]),
                    "org.apache.beam.fn.harness.ExternalWorkerService",
                ],
                env={**os.environ, "PIPELINE_OPTIONS": json.dumps(options)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the Java worker pool exited; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Java worker pool did not listen on {self.address}")

    def stop(self) -> None:
        """Stop the pool (and every Java SDK harness it runs)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=20)
        self._proc = None

    def __enter__(self) -> JavaWorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def java_expansion_service(worker_pool_address: str | None = None):
    """Beam's Java expansion service (KafkaIO included) started from the local classpath.

    Args:
        worker_pool_address: a :class:`JavaWorkerPool` address; the expanded Java transforms
            then run in that ``EXTERNAL`` environment instead of the Docker default.
    """
    from apache_beam.transforms.external import JavaJarExpansionService

    args = ["{{PORT}}"]
    if worker_pool_address:
        args += [
            "--defaultEnvironmentType=EXTERNAL",
            f"--defaultEnvironmentConfig={worker_pool_address}",
        ]
    return JavaJarExpansionService(str(launcher_jar("expansion")), extra_args=args)
