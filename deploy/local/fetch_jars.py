"""Resolve the Java classpaths that the local runners and broker need, into the cache.

Each ``deploy/local/<name>/pom.xml`` lists the Maven artifacts of one Java process. Maven copies
them (and their dependencies) into ``<cache>/jars/<name>-<hash of pom>/lib``; for the processes
that Beam starts with ``java -jar`` we also write a thin launcher jar whose manifest
``Class-Path`` names every jar in ``lib/``. Maven Central here does not serve Beam's shaded
``*-job-server`` / ``*-io-expansion-service`` jars, so this is how we get the same classpath.

Standard library only: it runs before the virtual environment has anything in it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> main class of the launcher jar (None: no launcher, the classpath is used directly).
CLASSPATHS = {
    "kafka": None,
    # Kafka's command-line tools (console producer), for the tests. Not "kafka-...": the
    # classpath lookup without a checkout globs "<name>-*", and "kafka-*" would match it.
    "kafka_tools": None,
    "flink": "org.apache.beam.runners.flink.FlinkJobServerDriver",
    "expansion": "org.apache.beam.sdk.expansion.service.ExpansionService",
}


def pom_key(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:12]


def manifest(main_class: str, jars: list[str]) -> bytes:
    """A jar manifest with lines wrapped at 72 bytes, as the jar specification requires."""

    def wrap(line: str) -> str:
        raw = line.encode()
        out = [raw[:72]]
        raw = raw[72:]
        while raw:
            out.append(b" " + raw[:71])
            raw = raw[71:]
        return b"\r\n".join(out).decode()

    lines = [
        "Manifest-Version: 1.0",
        f"Main-Class: {main_class}",
        wrap("Class-Path: " + " ".join(f"lib/{j}" for j in jars)),
        "Created-By: ae-pipeline deploy/local/fetch_jars.py",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def resolve(name: str, cache: Path) -> Path:
    pom = HERE / name / "pom.xml"
    dest = cache / "jars" / f"{name}-{pom_key(pom)}"
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "lib").mkdir(parents=True)
    print(f"fetch_jars: resolving {name} classpath from {pom.relative_to(HERE.parent.parent)}")
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp / 'lib'}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"fetch_jars: Maven could not resolve {pom} (exit {proc.returncode})")
    jars = sorted(os.listdir(tmp / "lib"))
    main_class = CLASSPATHS[name]
    if main_class:
        with zipfile.ZipFile(tmp / f"{name}-launcher.jar", "w") as zf:
            zf.writestr("META-INF/MANIFEST.MF", manifest(main_class, jars))
    (tmp / ".complete").write_text("\n".join(jars) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ae-pipeline")
    ap.add_argument("names", nargs="*", default=list(CLASSPATHS))
    args = ap.parse_args()
    for name in args.names:
        print(f"fetch_jars: {name}: {resolve(name, args.cache)}")


if __name__ == "__main__":
    main()
