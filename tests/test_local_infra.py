"""The local infrastructure itself: version pins agree, failures are loud and say why."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from ae_pipeline.local import paths
from ae_pipeline.local.kafka_broker import BrokerStartError, KafkaBroker
from ae_pipeline.local.paths import DEPLOY_LOCAL
from ae_pipeline.local.runners import runner_args


@pytest.mark.parametrize("pom", ["flink", "expansion"])
def test_java_classpaths_match_the_flink_compatible_beam_version(pom):
    """The Java jars are for the Beam of .venv-beam-2.62 (requirements/beam-2.62.txt)."""
    from kit.beam_envs import FLINK

    text = (DEPLOY_LOCAL / pom / "pom.xml").read_text()
    assert re.search(r"<beam.version>([^<]+)</beam.version>", text).group(1) == FLINK


def test_runner_args_refuse_unknown_runner_and_fnapi_streaming():
    with pytest.raises(ValueError, match="choose one of fnapi, prism, flink"):
        runner_args("sparkle")
    with pytest.raises(ValueError, match="ignores --streaming"):
        runner_args("fnapi", streaming=True)
    assert "--streaming" in runner_args("prism", streaming=True)


def test_broker_that_cannot_start_fails_loudly_with_its_log(tmp_path):
    # Occupy the port the broker is told to use: it must fail, and say why.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = KafkaBroker(port=port, data_dir=tmp_path / "kafka", startup_timeout=60)
        with pytest.raises(BrokerStartError) as err:
            broker.start()
    assert "Address already in use" in str(err.value) or "exited with code" in str(err.value)


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "ae_pipeline.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip()


def test_logs_dir_is_the_checkouts_when_running_from_it(monkeypatch):
    monkeypatch.delenv("AE_PIPELINE_LOGS", raising=False)
    root = paths.checkout_root()
    assert root is not None and (root / "ae_pipeline" / "local" / "paths.py").is_file()
    assert paths.logs_dir() == root / "logs"


def test_logs_dir_installed_from_the_wheel_is_in_the_users_cache(monkeypatch, tmp_path):
    """Installed, ``REPO_ROOT`` is site-packages: logs go to the cache, never beside the code."""
    site = tmp_path / "site-packages"
    (site / "ae_pipeline" / "local").mkdir(parents=True)
    monkeypatch.setattr(paths, "REPO_ROOT", site)
    monkeypatch.setattr(paths, "DEPLOY_LOCAL", site / "deploy" / "local")
    monkeypatch.setenv("AE_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AE_PIPELINE_LOGS", raising=False)
    assert paths.checkout_root() is None
    assert paths.logs_dir() == tmp_path / "cache" / "logs"
    assert (tmp_path / "cache" / "logs").is_dir()
    assert not (site / "logs").exists()
    # $AE_PIPELINE_LOGS wins everywhere.
    monkeypatch.setenv("AE_PIPELINE_LOGS", str(tmp_path / "mine"))
    assert paths.logs_dir() == tmp_path / "mine" and (tmp_path / "mine").is_dir()
