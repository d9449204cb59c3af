"""Helpers of the deploy tests: the deploy files, the options the jobs really have, and the job
invocations the deploy files contain (in Kubernetes manifests, compose files, shell scripts,
READMEs and the Airflow DAG)."""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import re
import shlex
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OWN_DIRS = [DEPLOY / name for name in ("dataflow", "flink", "kafka", "schedule")]

# Credentials of the SASL test broker (conftest.sasl_broker); they must never be shown.
SASL_USER = "deployer"
SASL_PASSWORD = "Zq8-deploy-s3cret-!x"

for _sub in ("flink", "kafka", "dataflow/flex"):
    if str(DEPLOY / _sub) not in sys.path:
        sys.path.insert(0, str(DEPLOY / _sub))


def deploy_files(*patterns: str) -> list[Path]:
    """Files under the deploy directories of this issue matching the glob patterns."""
    out = set()
    for d in OWN_DIRS:
        for pattern in patterns:
            out.update(p for p in d.rglob(pattern) if p.is_file())
    return sorted(out)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def yaml_docs(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- the options that exist ------------------------------------------------------------------
JOB_MODULES = {
    "train": "pipelines.train",
    "stream": "pipelines.stream",
    "encode": "pipelines.encode",
    "consume": "pipelines.consume",
    "demo": "pipelines.demo",
    "retrain-on-drift": "pipelines.retrain_on_drift",
    "retrain_on_drift": "pipelines.retrain_on_drift",
}
# Jobs whose options are a plain argparse parser (build_parser()), not Beam option classes.
PLAIN_PARSER_JOBS = ("consume", "retrain-on-drift", "retrain_on_drift")


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _switches(parser: argparse.ArgumentParser) -> set[str]:
    return {
        s
        for a in parser._actions
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        for s in a.option_strings
    }


def _options_parser(options_class: type) -> argparse.ArgumentParser:
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(add_help=False)
    for cls in reversed(options_class.mro()):
        if "_add_argparse_args" in cls.__dict__ and cls is not PipelineOptions:
            cls._add_argparse_args(parser)
    return parser


@functools.cache
def job_parser(job: str) -> argparse.ArgumentParser:
    """A parser with exactly the job's own options (not Beam's)."""
    module = importlib.import_module(JOB_MODULES[job])
    if job in PLAIN_PARSER_JOBS:
        return module.build_parser()
    classes = {
        "train": "TrainOptions",
        "stream": "StreamOptions",
        "encode": "EncodeOptions",
    }
    if job not in classes:
        return argparse.ArgumentParser(add_help=False)
    return _options_parser(getattr(module, classes[job]))


def job_flags(job: str) -> set[str]:
    return _flags(job_parser(job))


def job_switches(job: str) -> set[str]:
    return _switches(job_parser(job))


def job_uses_beam_options(job: str) -> bool:
    return job in ("train", "stream", "encode")


@functools.cache
def _beam_parser() -> argparse.ArgumentParser:
    """A parser with every option of Beam's own Python option classes (runner, Dataflow,
    portable, Flink, ...), i.e. the ``PipelineOptions`` subclasses defined in apache_beam."""
    import apache_beam.options.pipeline_options as po

    parser = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    seen = set()
    stack = [po.PipelineOptions]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub in seen:
                continue
            seen.add(sub)
            stack.append(sub)
            if sub.__module__.startswith("apache_beam") and "_add_argparse_args" in sub.__dict__:
                sub._add_argparse_args(parser)
    return parser


def beam_python_flags() -> set[str]:
    return _flags(_beam_parser())


def beam_python_switches() -> set[str]:
    return _switches(_beam_parser())


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


@functools.cache
def java_flink_flags() -> set[str]:
    """Options of the Java side of Beam's Flink runner (``--checkpointing_interval`` ...): the
    getters of the ``*Options`` interfaces in the Beam jars of the Flink job server classpath,
    in Python's snake_case spelling (Beam passes unknown Python flags on to Java)."""
    from ae_pipeline.local.paths import classpath_dir

    lib = classpath_dir("flink") / "lib"
    names = set()
    for jar in sorted(lib.glob("beam-*.jar")):
        with zipfile.ZipFile(jar) as zf:
            for entry in zf.namelist():
                if entry.endswith("Options.class") and "$" not in entry:
                    data = zf.read(entry)
                    names.update(m.decode() for m in re.findall(rb"get([A-Z][A-Za-z0-9]*)", data))
    return {"--" + _snake(n[0].lower() + n[1:]) for n in names}


# ---- job invocations in deploy files ---------------------------------------------------------
@dataclass
class Invocation:
    """One run of a job that a deploy file spells out."""

    job: str  # train, stream, consume, ... (a key of JOB_MODULES)
    args: list[str]  # the tokens after the job name
    where: str  # file (and place in it)
    entry: str = "ae-pipeline"  # how it is started: "ae-pipeline" or "-m pipelines.<job>"

    def flags(self) -> list[str]:
        return [a.split("=", 1)[0] for a in self.args if a.startswith("--")]

    def runner(self) -> str:
        for i, a in enumerate(self.args):
            if a.startswith("--runner="):
                return a.split("=", 1)[1]
            if a == "--runner" and i + 1 < len(self.args):
                return self.args[i + 1]
        return ""


_END = {"&&", "||", ";", "|", "&", ")", "done", "fi"}


_PREFIXES = {"exec", "&&", "||", ";", "|", "time", "nohup", "then", "do", "sudo"}


def _at_command_position(tokens: list[str], i: int) -> bool:
    """Token ``i`` starts a command (first, after a separator/prefix, or after VAR=value)."""
    while i > 0 and re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[i - 1]):
        i -= 1
    return i == 0 or tokens[i - 1] in _PREFIXES


def invocations_in_tokens(tokens: list[str], where: str) -> list[Invocation]:
    """Job invocations in a shell-like token list: ``ae-pipeline JOB ...``,
    ``python -m pipelines.JOB ...`` (also ``exec``-prefixed), up to a shell separator."""
    out = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        job = None
        if (
            _at_command_position(tokens, i)
            and re.fullmatch(r"(.*/)?ae-pipeline", tok)
            and (i + 1 < len(tokens))
        ):
            job, start, entry = tokens[i + 1], i + 2, "ae-pipeline"
        elif (
            tok == "-m"
            and i > 0
            and re.fullmatch(r"(.*/)?python[0-9.]*", tokens[i - 1])
            and i + 1 < len(tokens)
            and tokens[i + 1].startswith("pipelines.")
        ):
            job, start = tokens[i + 1].split(".", 1)[1], i + 2
            entry = f"-m {tokens[i + 1]}"
        if job is None or not re.fullmatch(r"[a-z_-]+", job):
            i += 1
            continue
        end = start
        while end < len(tokens) and tokens[end] not in _END:
            end += 1
        args = tokens[start:end]
        if job.startswith("retrain") and "--" in args:  # after "--": the retraining command
            args = args[: args.index("--")]
        # Prose such as "the ae-pipeline autoencoder" is no invocation: a known job, or flags.
        if job in JOB_MODULES or any(a.startswith("--") for a in args):
            out.append(Invocation(job, args, where, entry))
        i = end
    return out


def shell_commands(text: str) -> list[list[str]]:
    """Shell text -> logical commands (continuation lines joined, comments dropped) as tokens."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        if tokens:
            out.append(tokens)
    return out


def _containers(node, path=""):
    """(place, container dict) for every container / compose service in a YAML document."""
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            if isinstance(node.get(key), list):
                for c in node[key]:
                    if isinstance(c, dict):
                        yield f"{path}/{key}/{c.get('name')}", c
        if isinstance(node.get("services"), dict):
            for name, svc in node["services"].items():
                if isinstance(svc, dict):
                    yield f"{path}/services/{name}", svc
        for key, value in node.items():
            if key not in ("containers", "initContainers", "services"):
                yield from _containers(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _containers(value, f"{path}[{i}]")


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def container_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(place, argv) of every container or compose service in a YAML file: command/entrypoint
    plus args/command; an ``sh -c SCRIPT`` is split into the script's commands."""
    out = []
    for n, doc in enumerate(yaml_docs(path)):
        for place, c in _containers(doc):
            if "image" in c and ("entrypoint" in c or "build" in c or "deploy" in c):
                argv = _as_list(c.get("entrypoint")) + _as_list(c.get("command"))
            else:
                argv = _as_list(c.get("command")) + _as_list(c.get("args"))
            where = f"{rel(path)} doc {n} {place}"
            if len(argv) >= 3 and argv[0].endswith("sh") and argv[1] == "-c":
                for tokens in shell_commands(argv[2]):
                    out.append((where, tokens))
            elif argv:
                out.append((where, argv))
    return out


def _join_expr(node: ast.AST) -> str | None:
    """The string a ``" ".join([...])`` or string expression builds; formatted values become
    ``X``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and isinstance(node.func.value, ast.Constant)
        and node.args
        and isinstance(node.args[0], (ast.List, ast.Tuple))
    ):
        parts = [_join_expr(e) for e in node.args[0].elts]
        if all(p is not None for p in parts):
            return node.func.value.value.join(parts)
    return None


def python_strings(path: Path) -> list[str]:
    """Every string a Python file builds from literals (constants, f-strings, " ".join)."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        s = _join_expr(node)
        if s is not None:
            out.append(s)
    return out


def markdown_code(path: Path) -> str:
    """The fenced code blocks and inline code of a Markdown file."""
    text = path.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + inline)


def module_constants(path: Path) -> dict[str, Any]:
    """The values of a Python file's top-level assignments that evaluate from literals and the
    names before them (strings, dicts, lists), without importing the file."""
    namespace: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            try:
                value = eval(compile(ast.Expression(node.value), str(path), "eval"), namespace)
            except Exception:
                continue
            for target in node.targets:
                namespace[target.id] = value
    return namespace


def airflow_invocations(path: Path) -> list[Invocation]:
    """The training jobs an Airflow DAG file runs through the providers' operators:
    ``BeamRunPythonPipelineOperator(py_file="pipelines.JOB", pipeline_options={...})`` and
    ``DataflowStartFlexTemplateOperator(body=...)`` of an ``ae-pipeline-JOB.json`` template (its
    ``parameters``), as ``--name=value`` arguments."""
    namespace = module_constants(path)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}

        def value(name: str, kwargs: dict = kwargs) -> Any:
            return eval(compile(ast.Expression(kwargs[name]), str(path), "eval"), namespace)

        if node.func.id == "BeamRunPythonPipelineOperator":
            job, options = value("py_file").split(".")[-1], value("pipeline_options")
        elif node.func.id == "DataflowStartFlexTemplateOperator":
            launch = value("body")["launchParameter"]
            job = re.search(r"ae-pipeline-(\w+)\.json$", launch["containerSpecGcsPath"])[1]
            options = launch["parameters"]
        else:
            continue
        where = f"{rel(path)} {node.func.id}({value('task_id')})"
        out.append(Invocation(job, [f"--{k}={v}" for k, v in options.items()], where, "airflow"))
    return out


def all_invocations() -> list[Invocation]:
    """Every job invocation in the deploy files of this issue."""
    out: list[Invocation] = []
    for path in deploy_files("*.yaml", "*.yml"):
        for where, argv in container_commands(path):
            out += invocations_in_tokens(argv, where)
    for path in deploy_files("*.sh"):
        for tokens in shell_commands(path.read_text()):
            out += invocations_in_tokens(tokens, rel(path))
    for path in deploy_files("*.py"):
        for s in python_strings(path):
            for tokens in shell_commands(s):
                out += invocations_in_tokens(tokens, rel(path))
        out += airflow_invocations(path)
    for path in deploy_files("*.md"):
        for tokens in shell_commands(markdown_code(path)):
            out += invocations_in_tokens(tokens, rel(path))
    return out
