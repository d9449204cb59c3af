"""Every YAML and JSON file under deploy/{dataflow,flink,kafka,schedule} parses, and every
Kubernetes object, FlinkDeployment and compose file uses only fields its schema has.

The schemas below are the subsets of the Kubernetes API (batch/v1 Job and CronJob, apps/v1
Deployment, v1 Service, the Pod spec), of the Flink Kubernetes Operator's FlinkDeployment CRD
(flink.apache.org/v1beta1) and of the Compose specification that these files may use, with
``additionalProperties: false``: a misspelt or misplaced field fails here, not at
``kubectl apply`` time."""

from __future__ import annotations

import json

import jsonschema
import pytest
from deploy_kit import deploy_files, rel, yaml_docs

QUANTITY = {
    "anyOf": [{"type": "string", "pattern": r"^[0-9.]+([eEinumkKMGTP]+i?)?$"}, {"type": "number"}]
}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def obj(properties: dict, required: tuple = (), **extra) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        **extra,
    }


def array(items: dict, **extra) -> dict:
    return {"type": "array", "items": items, **extra}


NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
LABELS = {
    "type": "object",
    "propertyNames": {"pattern": r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"},
    "additionalProperties": {"type": "string", "maxLength": 63},
}
META = obj(
    {"name": NAME, "namespace": NAME, "labels": LABELS, "annotations": STR_MAP},
)
RESOURCES = obj(
    {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    }
)
ENV_VAR = obj(
    {
        "name": {"type": "string"},
        "value": {"type": "string"},
        "valueFrom": obj(
            {
                "secretKeyRef": obj({"name": NAME, "key": {"type": "string"}}, ("name", "key")),
                "configMapKeyRef": obj({"name": NAME, "key": {"type": "string"}}, ("name", "key")),
                "fieldRef": obj({"fieldPath": {"type": "string"}}, ("fieldPath",)),
            }
        ),
    },
    ("name",),
)
PORT = obj(
    {
        "name": {"type": "string", "maxLength": 15},
        "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
    },
    ("containerPort",),
)
MOUNT = obj(
    {
        "name": NAME,
        "mountPath": {"type": "string", "pattern": "^/"},
        "readOnly": {"type": "boolean"},
        "subPath": {"type": "string"},
    },
    ("name", "mountPath"),
)
STRINGS = array({"type": "string"})
PROBE = obj(
    {
        "httpGet": obj(
            {
                "path": {"type": "string", "pattern": "^/"},
                "port": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 15}]},
            },
            ("port",),
        ),
        "initialDelaySeconds": {"type": "integer", "minimum": 0},
        "periodSeconds": {"type": "integer", "minimum": 1},
        "timeoutSeconds": {"type": "integer", "minimum": 1},
        "failureThreshold": {"type": "integer", "minimum": 1},
        "successThreshold": {"type": "integer", "minimum": 1},
    },
    ("httpGet",),
)
CONTAINER = obj(
    {
        "name": NAME,
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": STRINGS,
        "args": STRINGS,
        "env": array(ENV_VAR),
        "ports": array(PORT),
        "resources": RESOURCES,
        "volumeMounts": array(MOUNT),
        "workingDir": {"type": "string"},
        "livenessProbe": PROBE,
        "readinessProbe": PROBE,
    },
    ("name",),
)
VOLUME = obj(
    {
        "name": NAME,
        "emptyDir": {"type": "object"},
        "secret": obj({"secretName": NAME, "defaultMode": {"type": "integer"}}, ("secretName",)),
        "configMap": obj({"name": NAME}, ("name",)),
        "persistentVolumeClaim": obj({"claimName": NAME}, ("claimName",)),
    },
    ("name",),
)
TOLERATION = obj(
    {
        "key": {"type": "string"},
        "operator": {"enum": ["Exists", "Equal"]},
        "value": {"type": "string"},
        "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
    }
)


def pod_spec(containers_required: bool = True) -> dict:
    return obj(
        {
            "containers": array(CONTAINER, minItems=1 if containers_required else 0),
            "initContainers": array(CONTAINER),
            "volumes": array(VOLUME),
            "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
            "serviceAccountName": NAME,
            "nodeSelector": STR_MAP,
            "tolerations": array(TOLERATION),
            "terminationGracePeriodSeconds": {"type": "integer"},
        },
        ("containers",) if containers_required else (),
    )


POD_TEMPLATE = obj({"metadata": META, "spec": pod_spec()}, ("spec",))
JOB_SPEC = obj(
    {
        "template": POD_TEMPLATE,
        "backoffLimit": {"type": "integer", "minimum": 0},
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
        "parallelism": {"type": "integer"},
        "completions": {"type": "integer"},
    },
    ("template",),
)
# Kubernetes' Job/CronJob pods must not restart in place ("Always" is refused for Jobs).
JOB_POD_RESTART = {"enum": ["OnFailure", "Never"]}

RBAC_SUBJECT = obj(
    {"kind": {"enum": ["ServiceAccount", "User", "Group"]}, "name": NAME, "namespace": NAME},
    ("kind", "name"),
)
RBAC_RULE = obj(
    {
        "apiGroups": STRINGS,
        "resources": STRINGS,
        "resourceNames": STRINGS,
        "verbs": array(
            {"enum": ["get", "list", "watch", "create", "update", "patch", "delete"]}, minItems=1
        ),
    },
    ("apiGroups", "resources", "verbs"),
)

SCHEMAS = {
    ("v1", "ServiceAccount"): obj(
        {"apiVersion": {}, "kind": {}, "metadata": META}, ("apiVersion", "kind", "metadata")
    ),
    ("rbac.authorization.k8s.io/v1", "Role"): obj(
        {"apiVersion": {}, "kind": {}, "metadata": META, "rules": array(RBAC_RULE, minItems=1)},
        ("apiVersion", "kind", "metadata", "rules"),
    ),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): obj(
        {
            "apiVersion": {},
            "kind": {},
            "metadata": META,
            "subjects": array(RBAC_SUBJECT, minItems=1),
            "roleRef": obj(
                {
                    "apiGroup": {"const": "rbac.authorization.k8s.io"},
                    "kind": {"enum": ["Role", "ClusterRole"]},
                    "name": NAME,
                },
                ("apiGroup", "kind", "name"),
            ),
        },
        ("apiVersion", "kind", "metadata", "subjects", "roleRef"),
    ),
    ("batch/v1", "Job"): obj(
        {"apiVersion": {}, "kind": {}, "metadata": META, "spec": JOB_SPEC},
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    ("batch/v1", "CronJob"): obj(
        {
            "apiVersion": {},
            "kind": {},
            "metadata": META,
            "spec": obj(
                {
                    "schedule": {"type": "string", "pattern": r"^(@\w+|(\S+\s+){4}\S+)$"},
                    "timeZone": {"type": "string"},
                    "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
                    "startingDeadlineSeconds": {"type": "integer", "minimum": 0},
                    "successfulJobsHistoryLimit": {"type": "integer", "minimum": 0},
                    "failedJobsHistoryLimit": {"type": "integer", "minimum": 0},
                    "suspend": {"type": "boolean"},
                    "jobTemplate": obj({"metadata": META, "spec": JOB_SPEC}, ("spec",)),
                },
                ("schedule", "jobTemplate"),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    ("apps/v1", "Deployment"): obj(
        {
            "apiVersion": {},
            "kind": {},
            "metadata": META,
            "spec": obj(
                {
                    "replicas": {"type": "integer", "minimum": 0},
                    "selector": obj({"matchLabels": LABELS}, ("matchLabels",)),
                    "template": POD_TEMPLATE,
                    "strategy": {"type": "object"},
                },
                ("selector", "template"),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    ("apps/v1", "StatefulSet"): obj(
        {
            "apiVersion": {},
            "kind": {},
            "metadata": META,
            "spec": obj(
                {
                    "serviceName": NAME,
                    "replicas": {"type": "integer", "minimum": 0},
                    "podManagementPolicy": {"enum": ["OrderedReady", "Parallel"]},
                    "selector": obj({"matchLabels": LABELS}, ("matchLabels",)),
                    "template": POD_TEMPLATE,
                    "updateStrategy": {"type": "object"},
                },
                ("selector", "template"),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    ("v1", "Service"): obj(
        {
            "apiVersion": {},
            "kind": {},
            "metadata": META,
            "spec": obj(
                {
                    "selector": LABELS,
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                    "ports": array(
                        obj(
                            {
                                "name": {"type": "string"},
                                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "targetPort": {"type": ["integer", "string"]},
                                "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                            },
                            ("port",),
                        ),
                        minItems=1,
                    ),
                },
                ("ports",),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
}

FLINK_RESOURCE = obj(
    {
        "cpu": {"type": "number", "exclusiveMinimum": 0},
        "memory": {"type": "string", "pattern": r"^[0-9]+(m|g|Mi|Gi)$"},
        "ephemeralStorage": {"type": "string"},
    },
    ("cpu", "memory"),
)
FLINK_POD_TEMPLATE = obj(
    {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "Pod"},
        "metadata": META,
        "spec": pod_spec(False),
    }
)
FLINK_COMPONENT = obj(
    {
        "replicas": {"type": "integer", "minimum": 1},
        "resource": FLINK_RESOURCE,
        "podTemplate": FLINK_POD_TEMPLATE,
    },
    ("resource",),
)
SCHEMAS["flink.apache.org/v1beta1", "FlinkDeployment"] = obj(
    {
        "apiVersion": {},
        "kind": {},
        "metadata": META,
        "spec": obj(
            {
                "image": {"type": "string"},
                "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                "flinkVersion": {"enum": ["v1_16", "v1_17", "v1_18", "v1_19", "v1_20"]},
                "serviceAccount": NAME,
                "mode": {"enum": ["native", "standalone"]},
                # The operator's CRD: a map of strings (quote numbers and booleans).
                "flinkConfiguration": STR_MAP,
                "logConfiguration": STR_MAP,
                "podTemplate": FLINK_POD_TEMPLATE,
                "jobManager": FLINK_COMPONENT,
                "taskManager": FLINK_COMPONENT,
                "job": obj(
                    {
                        "jarURI": {"type": "string"},
                        "entryClass": {"type": "string"},
                        "args": STRINGS,
                        "parallelism": {"type": "integer"},
                        "upgradeMode": {"enum": ["stateless", "savepoint", "last-state"]},
                        "state": {"enum": ["running", "suspended"]},
                    }
                ),
                "restartNonce": {"type": "integer"},
            },
            ("image", "flinkVersion", "jobManager", "taskManager"),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

COMPOSE_SERVICE = obj(
    {
        "image": {"type": "string"},
        "build": {"type": ["string", "object"]},
        "hostname": {"type": "string"},
        "ports": array({"type": "string", "pattern": r"^([0-9.]+:)?[0-9]+:[0-9]+(/(tcp|udp))?$"}),
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "volumes": array({"type": "string"}),
        "depends_on": {
            "type": "object",
            "additionalProperties": obj(
                {
                    "condition": {
                        "enum": [
                            "service_started",
                            "service_healthy",
                            "service_completed_successfully",
                        ]
                    }
                },
                ("condition",),
            ),
        },
        "entrypoint": STRINGS,
        "command": STRINGS,
        "healthcheck": obj(
            {
                "test": STRINGS,
                "interval": {"type": "string"},
                "timeout": {"type": "string"},
                "retries": {"type": "integer"},
                "start_period": {"type": "string"},
            },
            ("test",),
        ),
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "deploy": obj({"replicas": {"type": "integer", "minimum": 0}}),
    },
    anyOf=[{"required": ["image"]}, {"required": ["build"]}],
)
COMPOSE = obj(
    {
        "name": {"type": "string"},
        "services": {"type": "object", "additionalProperties": COMPOSE_SERVICE, "minProperties": 1},
        "volumes": {"type": "object"},
        "networks": {"type": "object"},
    },
    ("services",),
)


def _k8s_objects():
    for path in deploy_files("*.yaml", "*.yml"):
        for n, doc in enumerate(yaml_docs(path)):
            if isinstance(doc, dict) and "apiVersion" in doc:
                yield pytest.param(doc, id=f"{rel(path)}#{n}:{doc.get('kind')}")


def test_every_yaml_and_json_file_parses():
    yamls = deploy_files("*.yaml", "*.yml")
    jsons = deploy_files("*.json")
    assert len(yamls) >= 6 and len(jsons) >= 4, (yamls, jsons)
    for path in yamls:
        assert yaml_docs(path), f"{rel(path)} is empty"
    for path in jsons:
        assert isinstance(json.loads(path.read_text()), dict), rel(path)


@pytest.mark.parametrize("doc", list(_k8s_objects()))
def test_kubernetes_object_matches_its_schema(doc):
    key = (doc["apiVersion"], doc.get("kind"))
    assert key in SCHEMAS, f"no schema for {key}: add one (or fix apiVersion/kind)"
    jsonschema.validate(doc, SCHEMAS[key])
    if key in (("batch/v1", "Job"), ("batch/v1", "CronJob")):
        spec = doc["spec"] if key[1] == "Job" else doc["spec"]["jobTemplate"]["spec"]
        restart = spec["template"]["spec"].get("restartPolicy")
        jsonschema.validate(restart, JOB_POD_RESTART)
    if key[1] in ("Deployment", "StatefulSet"):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), "the selector must match the pod labels"


def test_every_kind_of_object_is_covered():
    kinds = {(d.values[0]["apiVersion"], d.values[0]["kind"]) for d in _k8s_objects()}
    assert {
        ("flink.apache.org/v1beta1", "FlinkDeployment"),
        ("batch/v1", "CronJob"),
        ("batch/v1", "Job"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("v1", "Service"),
    } <= kinds


def test_services_select_pods_that_exist():
    """Each Service's selector matches the labels of some pod template in the same files."""
    pod_labels, services = [], []
    for path in deploy_files("*.yaml"):
        for doc in yaml_docs(path):
            if doc.get("kind") == "Service":
                services.append(doc)
            elif doc.get("kind") == "Deployment":
                pod_labels.append(doc["spec"]["template"]["metadata"]["labels"])
    assert services
    for svc in services:
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), svc["metadata"]


def test_compose_file_matches_the_compose_schema():
    (path,) = deploy_files("docker-compose.yml")
    (doc,) = yaml_docs(path)
    jsonschema.validate(doc, COMPOSE)
    services = doc["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in (doc.get("volumes") or {}), f"{name}: volume {source} undeclared"
            elif source.startswith("."):
                assert (path.parent / source).resolve().is_relative_to(path.parent)
    # KRaft single node: every KAFKA_* setting is a broker property name.
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    listeners = {x.split("://")[0] for x in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(
        x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert listeners <= set(protocol_map), "every listener needs a security protocol"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners


def test_the_exactly_once_scorer_takes_its_pod_name_as_transactional_id():
    """A stable transactional id per pod (a restart fences its predecessor at once), never one
    shared by two live pods: the StatefulSet's pod name, through the downward API."""
    from pipelines.consume import build_parser

    (path,) = deploy_files("consumer-statefulset.yaml")
    (doc,) = yaml_docs(path)
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    args = build_parser().parse_args(container["args"][1:])
    assert args.processing_guarantee == "exactly_once"
    assert args.transactional_id == "$(POD_NAME)"
    assert args.commit_interval_s < args.transaction_timeout_s
    assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
