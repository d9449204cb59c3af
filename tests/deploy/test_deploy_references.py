"""Everything a deploy file names exists: the jobs and their options (in manifests, compose,
scripts, READMEs and the DAG), the scripts' own options, the files the Dockerfiles copy, the
images the manifests run, and the versions they pin; every entry point's ``--help`` runs."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_kit import (
    DEPLOY,
    JOB_MODULES,
    REPO,
    all_invocations,
    beam_python_flags,
    beam_python_switches,
    deploy_files,
    invocations_in_tokens,
    java_flink_flags,
    job_flags,
    job_switches,
    job_uses_beam_options,
    rel,
)

PORTABLE_RUNNERS = ("FlinkRunner", "PortableRunner")


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower()] = version
    return pins


def _allowed_flags(inv) -> set[str]:
    allowed = set(job_flags(inv.job))
    if job_uses_beam_options(inv.job):
        allowed |= beam_python_flags()
        if inv.runner().endswith(PORTABLE_RUNNERS):
            # Flags Python does not know go to the Java runner (the Flink job server).
            allowed |= java_flink_flags()
    return allowed


INVOCATIONS = all_invocations()


def test_the_deploy_files_run_every_job_they_are_for():
    jobs = {(inv.job, inv.where.split(" ")[0]) for inv in INVOCATIONS}
    files = {where for _, where in jobs}
    assert {
        "deploy/flink/k8s/stream-job.yaml",
        "deploy/schedule/retrain-cronjob.yaml",
        "deploy/schedule/airflow_retrain_dag.py",
        "deploy/kafka/docker-compose.yml",
        "deploy/dataflow/run_stream_direct.sh",
    } <= files, files


def problems(inv) -> list[str]:
    """What is wrong with one job invocation: unknown job, unknown options, valued switches."""
    if inv.job not in JOB_MODULES:
        return [f"no job {inv.job!r} (see ae-pipeline --help)"]
    out = []
    unknown = sorted(set(inv.flags()) - _allowed_flags(inv))
    if unknown:
        out.append(f"`{inv.job}` has no options {unknown}")
    # argparse store_true switches (Beam's own, like --streaming) take no value: "--streaming=true"
    # would stop the job at start-up. The jobs' switches take one (add_switch).
    switches = job_switches(inv.job) | (
        beam_python_switches() if job_uses_beam_options(inv.job) else set()
    )
    valued = [
        a for a in inv.args if a.startswith("--") and a.split("=")[0] in switches and "=" in a
    ]
    if valued:
        out.append(f"switches given a value: {valued}")
    return out


@pytest.mark.parametrize("inv", INVOCATIONS, ids=lambda inv: f"{inv.job}@{inv.where}")
def test_every_job_and_option_a_deploy_file_names_exists(inv):
    assert problems(inv) == [], inv.where


def test_the_check_catches_wrong_jobs_options_and_switches():
    cases = {
        "ae-pipeline train --input x --model_rot y": "no options ['--model_rot']",
        # The jobs' own on/off options take a value (add_switch); Beam's store_true ones do not.
        "ae-pipeline train --input x --warm_start=true": None,
        "python -m pipelines.stream --bounded=false --streaming=true": "switches given a value",
        "ae-pipeline retrain --input x": "no job 'retrain'",
        # Java-only Flink options are accepted for Flink/portable runs only.
        "python -m pipelines.stream --runner=DataflowRunner --checkpointing_interval=1": (
            "no options ['--checkpointing_interval']"
        ),
        "python -m pipelines.stream --runner=FlinkRunner --checkpointing_interval=1": None,
        "python -m pipelines.stream --runner=FlinkRunner --checkpointing_intervall=1": (
            "no options ['--checkpointing_intervall']"
        ),
    }
    for text, expected in cases.items():
        (inv,) = invocations_in_tokens(text.split(), "case")
        found = problems(inv)
        if expected is None:
            assert found == [], (text, found)
        else:
            assert any(expected in p for p in found), (text, found)


def _help(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*argv, "--help"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_every_entry_point_a_deploy_file_names_runs_its_help():
    """``--help`` of every job the deploy files run, started the way they start it (the
    ``ae-pipeline`` console script or ``python -m pipelines.X``), and of the deploy scripts; run
    side by side (each imports Beam and torch). The help lists every option the files use."""
    cli = Path(sys.executable).with_name("ae-pipeline")
    procs, used = {}, {}
    for inv in INVOCATIONS:
        if inv.job not in JOB_MODULES:
            continue
        key = (inv.entry, inv.job)
        used.setdefault(key, set()).update(set(inv.flags()) & job_flags(inv.job))
        if key not in procs:
            argv = (
                [str(cli), inv.job]
                if inv.entry == "ae-pipeline"
                else [sys.executable, "-m", JOB_MODULES[inv.job]]
            )
            procs[key] = _help(*argv)
    for script in ("deploy/kafka/apply_topics.py", "deploy/flink/local_cluster.py"):
        procs[script, ""] = _help(sys.executable, script)
    assert {entry for entry, _ in procs} >= {"ae-pipeline", "-m pipelines.stream"}
    for key, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{key} --help failed:\n{out[-2000:]}"
        assert "usage:" in out, key
        for flag in used.get(key, ()):
            assert flag in out, f"{key} --help does not list {flag}"


def test_scripts_the_deploy_files_run_exist():
    """Scripts and modules named by path (``python deploy/...py``, ``-m module``)."""
    text = "\n".join(p.read_text() for p in deploy_files("*.md", "*.sh", "*.yaml", "*.yml", "*.py"))
    scripts = set(re.findall(r"(?<![\w/.-])(deploy/[\w/.-]+\.(?:py|sh|json|yaml|yml))\b", text))
    assert scripts
    for script in scripts:
        assert (REPO / script).exists(), f"{script} is named but does not exist"
    modules = set(re.findall(r"python3? -m ([a-z_][\w.]*)", text))
    assert modules
    import importlib.util

    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"no module {module}"


def test_dockerfiles_copy_files_that_exist_and_pin_the_tested_versions():
    # The images default to the newest tested Beam (requirements/lock.txt, .venv); build.sh
    # builds the Flink ones at the Flink Beam (next tests). deploy/dataflow/README.md "Which
    # image runs which Beam".
    from kit.beam_envs import NEWEST

    pins = _lock_pins()
    assert pins["apache-beam"] == NEWEST
    for path in deploy_files("Dockerfile*"):
        text = path.read_text()
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
            *sources, _ = line.split()
            for source in sources:
                assert (REPO / source).exists(), f"{rel(path)}: COPY {source}: not in the repo"
        assert re.search(r"^ARG BEAM_VERSION=(\S+)$", text, flags=re.M)[1] == NEWEST, (
            f"{rel(path)}: Beam version differs from the newest tested one"
        )
        # The installed Beam is checked against BEAM_VERSION after the install.
        assert "assert apache_beam.__version__ == '${BEAM_VERSION}'" in text, rel(path)
        assert 'constraints.py requirements/lock.txt "${BEAM_PINS}"' in text, rel(path)
        base = re.search(r"^FROM apache/beam_python(\d+)\.(\d+)_sdk:", text, flags=re.M)
        assert base, f"{rel(path)}: not based on Beam's Python SDK image"
        assert (int(base[1]), int(base[2])) >= (3, 10) and (int(base[1]), int(base[2])) < (3, 13)
        torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, flags=re.M)
        if torch:
            assert torch[1] == pins["torch"], (
                f"{rel(path)}: torch differs from requirements/lock.txt"
            )
        # The Flex Template launcher runs /template/<job>_main.py for every job the image is
        # built for (the JOB default and each --build-arg JOB=... of build.sh).
        assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/${JOB}_main.py" in text
        jobs = set(re.findall(r"^ARG JOB=(\w+)$", text, flags=re.M))
        build = (DEPLOY / "dataflow" / "build.sh").read_text()
        jobs |= set(re.findall(rf"build {re.escape(path.name)} (\w+) ", build))
        for job in jobs:
            assert (DEPLOY / "dataflow" / "flex" / f"{job}_main.py").exists(), (path.name, job)


def _built_images() -> dict[str, dict[str, str]]:
    """build.sh's images: name -> the Dockerfile, the job and the build args it passes."""
    build = (DEPLOY / "dataflow" / "build.sh").read_text()
    arrays = {
        name: dict(re.findall(r"--build-arg (\w+)=(\S+)", body))
        for name, body in re.findall(r"^(\w+)=\((.*)\)$", build, flags=re.M)
    }
    images = {}
    for dockerfile, job, name, rest in re.findall(
        r'^build (\S+) (\w+) "\$REPOSITORY/([\w-]+):\$VERSION"(.*)$', build, flags=re.M
    ):
        args = dict(re.findall(r"--build-arg (\w+)=(\S+)", rest))
        for array in re.findall(r'"\$\{(\w+)\[@\]\}"', rest):
            args.update(arrays[array])
        images[name] = {"dockerfile": dockerfile, "job": job, **args}
    return images


def test_flink_images_run_the_job_servers_beam_and_the_others_the_newest():
    """Flink: the submitter, the job server and the SDK harness run one Beam (2.62.0, the Flink
    runner's); every other image runs the newest tested Beam (the Dockerfiles' default)."""
    from kit.beam_envs import FLINK as FLINK_BEAM
    from kit.beam_envs import NEWEST

    images = _built_images()
    flink = {n for n in images if n.startswith("ae-pipeline-flink-")}
    assert flink == {"ae-pipeline-flink-cpu", "ae-pipeline-flink-gpu"}
    for name, spec in images.items():
        if name in flink:
            assert spec.get("BEAM_VERSION") == FLINK_BEAM, (name, spec)
            overlay = (REPO / spec["BEAM_PINS"]).read_text()
            assert f"\napache-beam=={FLINK_BEAM}\n" in f"\n{overlay}", (name, spec)
        else:
            assert "BEAM_VERSION" not in spec and "BEAM_PINS" not in spec, (name, spec)
            assert _lock_pins()["apache-beam"] == NEWEST
    # Who runs which: under deploy/flink only the Flink images, elsewhere never.
    for path in deploy_files("*.yaml", "*.yml", "*.sh", "*.py"):
        used = set(re.findall(r"/ae-pipeline/(ae-pipeline-[\w-]+):", path.read_text()))
        if rel(path).startswith("deploy/flink/"):
            assert used <= flink, f"{rel(path)}: {used - flink} is not at the Flink Beam"
        else:
            assert not used & flink, f"{rel(path)}: {used & flink} is a Flink image"
    fd = (DEPLOY / "flink" / "k8s" / "flink-deployment.yaml").read_text()
    submit = (DEPLOY / "flink" / "k8s" / "stream-job.yaml").read_text()
    assert "/ae-pipeline-flink-gpu:" in fd and "/ae-pipeline-flink-cpu:" in submit
    job_server = (DEPLOY / "flink" / "k8s" / "beam-job-server.yaml").read_text()
    assert f"apache/beam_flink1.19_job_server:{FLINK_BEAM}" in job_server


def test_image_constraints_are_the_lock_or_the_flink_environments():
    """deploy/dataflow/constraints.py composes what bootstrap.sh composes for .venv-beam-2.62."""
    spec = importlib.util.spec_from_file_location(
        "deploy_constraints", DEPLOY / "dataflow" / "constraints.py"
    )
    constraints = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(constraints)
    from kit.beam_envs import FLINK as FLINK_BEAM
    from kit.beam_envs import NEWEST

    lock = REPO / "requirements" / "lock.txt"
    overlay = REPO / "requirements" / "beam-2.62.txt"
    newest = constraints.pins_of(constraints.compose(str(lock)))
    assert newest == constraints.pins(str(lock))
    assert newest["apache-beam"] == f"apache-beam=={NEWEST}"
    over = constraints.pins(str(overlay))
    flink = constraints.pins_of(constraints.compose(str(lock), str(overlay)))
    assert flink["apache-beam"] == f"apache-beam=={FLINK_BEAM}"
    # The overlay's pins, and everything else as the lock has it.
    assert flink == {**newest, **over}
    assert constraints.compose(str(lock), "") == constraints.compose(str(lock))


def test_every_image_a_manifest_runs_is_built_here_or_pinned():
    build = (DEPLOY / "dataflow" / "build.sh").read_text()
    built = set(re.findall(r'"\$REPOSITORY/([\w-]+):\$VERSION"', build))
    dataflow = {"ae-pipeline-cpu", "ae-pipeline-gpu", "ae-pipeline-gpu-train"}
    flink = {"ae-pipeline-flink-cpu", "ae-pipeline-flink-gpu"}
    assert built == set(_built_images()) == dataflow | flink
    text = "\n".join(p.read_text() for p in deploy_files("*.yaml", "*.yml", "*.sh", "*.py"))
    ours = set(re.findall(r"/ae-pipeline/(ae-pipeline-[\w-]+):", text))
    ours |= set(re.findall(r"\$REPOSITORY/(ae-pipeline-[\w-]+):", text))
    ours |= set(re.findall(r"image: (ae-pipeline-[\w-]+):local", text))
    assert ours and ours <= built, f"images not built by build.sh: {ours - built}"
    public = set(re.findall(r"image: ((?:flink|apache/[\w.-]+):\S+)", text))
    assert public, "no public images?"
    for image in public:
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.match(r"^\d", tag), f"{image}: pin a version"
    from kit.beam_envs import FLINK as FLINK_BEAM

    assert f"apache/beam_flink1.19_job_server:{FLINK_BEAM}" in public


def test_shell_scripts_parse():
    scripts = deploy_files("*.sh")
    assert scripts
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{rel(script)}: {proc.stderr}"
        if script.name != "env.sh":
            assert script.stat().st_mode & 0o111, f"{rel(script)} is not executable"
            assert "set -euo pipefail" in script.read_text(), rel(script)
