"""The Helm chart: lint, render every scenario, validate offline, check its promises.

Scenarios are the values files under charts/batchgrid/ci/. Manifests are validated
against the Kubernetes 1.30 and 1.35 schemas (kubernetes-validate) and custom
resources against models generated from the KEDA and Prometheus-operator CRDs.
"""

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart_support import (
    CHART,
    CHECKOV,
    CUSTOM_GROUPS,
    KUBE_VERSIONS,
    NODEJS_BIN,
    README_GENERATOR,
    ROOT,
    SCENARIOS,
    RenderError,
    check_custom_resource,
    helm,
    manifests,
    of_kind,
    pod_specs,
    render,
    require_tool,
    scenario_file,
    secret_values,
)

pytestmark = pytest.mark.chart

#: checkov checks the chart does not meet, each with the reason it is accepted.
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images are pinned by tag; a digest can be set per image "
    "(image.*.digest) where the registry's digests are known",
    "CKV_K8S_15": "imagePullPolicy IfNotPresent is deliberate: tags are immutable "
    "release versions, and Always would make every pod start depend on the registry",
    "CKV_K8S_40": "Valkey (uid 999) and celery-exporter (uid 1000) run as the users "
    "their images were built for, below checkov's 10000; batchgrid's own is 10001",
    "CKV_K8S_35": "secrets are passed as environment variables from secretKeyRef: "
    "batchgrid reads its settings from BATCHGRID_* variables, and the values never "
    "appear in the manifests (asserted by test_secrets_appear_only_in_secret_objects)",
    "CKV_K8S_11": "no CPU limits on purpose: a limit throttles batch tasks without "
    "protecting anything that the requests do not already",
    "CKV_K8S_21": "the namespace is chosen at install time (helm --namespace); "
    "templates carry none",
    "CKV2_K8S_6": "one NetworkPolicy guards Redis, the only component holding data; "
    "the producer and exporters must be reachable from ingress and Prometheus",
    "CKV_K8S_38": "service account tokens are not mounted "
    "(automountServiceAccountToken: false on every pod); checkov reads only the "
    "ServiceAccount object",
}
#: A check skipped on one object only carries its reason in a checkov.io/skipN
#: annotation on that object.


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (config,) = [
        doc
        for doc in of_kind(docs, "ConfigMap")
        if doc["metadata"]["name"] == "batchgrid-config"
    ]
    data: dict[str, str] = config["data"]
    return data


def _workers(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [
        doc
        for doc in of_kind(docs, "Deployment")
        if doc["metadata"]["labels"]["app.kubernetes.io/component"].startswith(
            "worker-"
        )
    ]


def test_scenarios_cover_the_issue_list() -> None:
    expected = {
        "default",
        "keda",
        "keda-prometheus",
        "hpa",
        "hpa-cpu",
        "external-redis",
        "s3",
        "monitoring",
        "auth",
    }

    assert expected <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict_passes(scenario: str) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(scenario_file(scenario)))

    assert "0 chart(s) failed" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_are_valid_kubernetes(scenario: str, kube_version: str) -> None:
    docs = [
        doc
        for doc in yaml.safe_load_all(render(scenario, kube_version=kube_version))
        if doc and not doc["apiVersion"].startswith(CUSTOM_GROUPS)
    ]

    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_match_their_crds(scenario: str) -> None:
    custom = [
        doc
        for doc in manifests(scenario)
        if doc["apiVersion"].startswith(CUSTOM_GROUPS)
    ]

    problems = {
        f"{doc['kind']}/{doc['metadata']['name']}": check_custom_resource(doc)
        for doc in custom
    }
    assert not any(problems.values()), problems


def test_scenarios_render_the_custom_resources_they_switch_on() -> None:
    kinds = {
        scenario: {doc["kind"] for doc in manifests(scenario)} for scenario in SCENARIOS
    }

    assert {"ScaledObject", "TriggerAuthentication"} <= kinds["keda"]
    assert "HorizontalPodAutoscaler" in kinds["hpa"]
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds["monitoring"]
    assert not kinds["default"] & {"ScaledObject", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize(
    ("kind", "scenario", "mutate"),
    [
        ("ScaledObject", "keda", lambda d: d["spec"].update(bogusField=1)),
        ("ScaledObject", "keda", lambda d: d["spec"].update(minReplicaCount="1")),
        ("ScaledObject", "keda", lambda d: d["spec"].pop("triggers")),
        (
            "TriggerAuthentication",
            "keda",
            lambda d: d["spec"]["secretTargetRef"][0].pop("key"),
        ),
        (
            "ServiceMonitor",
            "monitoring",
            lambda d: d["spec"]["endpoints"][0].update(scheme=3),
        ),
        ("PodMonitor", "monitoring", lambda d: d["spec"].update(podMetricEndpoints=[])),
        (
            "PrometheusRule",
            "monitoring",
            lambda d: d["spec"]["groups"][0].update(rulez=[]),
        ),
    ],
)
def test_crd_checks_catch_unknown_fields_and_wrong_types(
    kind: str, scenario: str, mutate: Any
) -> None:
    doc = copy.deepcopy(of_kind(manifests(scenario), kind)[0])

    mutate(doc)

    assert check_custom_resource(doc), f"a broken {kind} passed"


CRDS = ROOT.parent / "shared" / "crds"


@pytest.mark.skipif(
    not CRDS.is_dir(), reason="the upstream CRD files are not beside the repo"
)
def test_crd_models_agree_with_the_upstream_crd_files() -> None:
    """The models (PyPI) are checked against the CRD files when they are at hand."""
    import jsonschema

    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (
                f"{crd['spec']['group']}/{version['name']}",
                crd["spec"]["names"]["kind"],
            )
            schemas[key] = _closed(version["schema"]["openAPIV3Schema"])
    docs = [
        doc
        for s in SCENARIOS
        for doc in manifests(s)
        if doc["apiVersion"].startswith(CUSTOM_GROUPS)
    ]

    for doc in docs:
        # CRD patterns use Go regex syntax, so the schema itself is not meta-checked.
        validator = jsonschema.Draft7Validator(
            schemas[(doc["apiVersion"], doc["kind"])]
        )
        validator.validate(doc)
        broken = copy.deepcopy(doc)
        broken["spec"]["bogusField"] = 1
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)
        assert check_custom_resource(broken)


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as kubectl --validate=strict does."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            closed.setdefault("additionalProperties", False)
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secrets_appear_only_in_secret_objects(scenario: str) -> None:
    docs = manifests(scenario, "producer.auth.enabled=true")
    secrets = secret_values(docs)
    others = [doc for doc in docs if doc["kind"] != "Secret"]

    assert secrets or scenario in ("external-redis",), "the render generated no secret"
    for doc in others:
        text = json.dumps(doc)
        leaked = [value for value in secrets if value in text]
        assert not leaked, f"{doc['kind']}/{doc['metadata']['name']} holds a secret"
    for name, spec in pod_specs(tuple(others)):
        for container in spec["containers"]:
            for entry in container.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY", entry["name"]):
                    assert "valueFrom" in entry, f"{name}: {entry['name']} is inline"


def test_generated_secrets_are_kept_on_upgrade_and_uninstall() -> None:
    docs = manifests("auth")

    for secret in of_kind(docs, "Secret"):
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    template = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret"' in template


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_worker_grace_period_covers_the_hard_limit_or_the_soft_shutdown(
    scenario: str,
) -> None:
    docs = manifests(scenario)
    hard_limit_s = int(_config(docs)["BATCHGRID_HARD_TIME_LIMIT_S"])

    workers = _workers(docs)
    assert workers
    for worker in workers:
        grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        env = _env(worker["spec"]["template"]["spec"]["containers"][0])
        if "BATCHGRID_SOFT_SHUTDOWN_TIMEOUT_S" in env:
            soft_s = int(env["BATCHGRID_SOFT_SHUTDOWN_TIMEOUT_S"]["value"])
            assert env["REMAP_SIGTERM"]["value"] == "SIGQUIT"
            assert soft_s + 10 <= grace_s
        else:
            assert "REMAP_SIGTERM" not in env
            assert grace_s >= hard_limit_s


def test_soft_shutdown_derives_a_grace_period_below_the_hard_limit() -> None:
    (worker, *_) = _workers(manifests("default", "worker.softShutdownSeconds=60"))

    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90


def _triggers(scaled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {trigger["type"]: trigger for trigger in scaled["spec"]["triggers"]}


def test_keda_scales_each_queue_on_its_backlog_with_a_list_length_floor() -> None:
    docs = manifests("keda")
    auths = {
        doc["metadata"]["name"]: doc for doc in of_kind(docs, "TriggerAuthentication")
    }
    secrets = {doc["metadata"]["name"] for doc in of_kind(docs, "Secret")}

    scaled = {
        doc["spec"]["scaleTargetRef"]["name"]: doc
        for doc in of_kind(docs, "ScaledObject")
    }
    assert set(scaled) == {worker["metadata"]["name"] for worker in _workers(docs)}
    for name, doc in scaled.items():
        queue = name.rsplit("-", 1)[1]
        triggers = _triggers(doc)
        backlog, floor = triggers["metrics-api"], triggers["redis"]
        assert backlog["metadata"]["url"] == (
            f"http://batchgrid-producer.batchgrid.svc:80/queues/{queue}"
        )
        assert backlog["metadata"]["valueLocation"] == "backlog"
        assert backlog["metadata"]["targetValue"] == "2"  # the queue's concurrency
        assert backlog["metadata"]["activationTargetValue"] == "0"
        assert backlog["metadata"]["authMode"] == "bearer"
        assert floor["metadata"]["listName"] == queue
        assert floor["metadata"]["listLength"] == "2"
        assert doc["spec"]["minReplicaCount"] == 0  # scale to zero
        assert doc["spec"]["fallback"]["replicas"] >= 1
        behavior = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
        for trigger in (backlog, floor):
            ref = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            assert {entry["name"] for entry in ref} <= secrets
    api_ref = auths["batchgrid-api-auth"]["spec"]["secretTargetRef"][0]
    redis_ref = auths["batchgrid-redis-auth"]["spec"]["secretTargetRef"][0]
    assert (api_ref["parameter"], api_ref["key"]) == ("token", "api-token")
    assert (redis_ref["parameter"], redis_ref["name"]) == (
        "password",
        "batchgrid-redis",
    )


def test_keda_prometheus_trigger_reads_the_largest_producer_reading() -> None:
    docs = manifests("keda-prometheus")

    for doc in of_kind(docs, "ScaledObject"):
        queue = doc["spec"]["scaleTargetRef"]["name"].rsplit("-", 1)[1]
        assert set(_triggers(doc)) == {"prometheus"}
        metadata = _triggers(doc)["prometheus"]["metadata"]
        assert metadata["query"] == f'max(batchgrid_queue_backlog{{queue="{queue}"}})'
        # A missing series falls back to fallback.replicas, never reads as 0.
        assert metadata["ignoreNullValues"] == "false"
    assert not of_kind(docs, "TriggerAuthentication")


def test_hpa_scales_on_the_external_backlog_metric_or_on_cpu() -> None:
    external = of_kind(manifests("hpa"), "HorizontalPodAutoscaler")
    cpu = of_kind(manifests("hpa-cpu"), "HorizontalPodAutoscaler")

    assert len(external) == len(cpu) == 2
    for hpa in external:
        (metric,) = hpa["spec"]["metrics"]
        assert metric["external"]["metric"]["name"] == "batchgrid_queue_backlog"
        queue = hpa["metadata"]["name"].rsplit("-", 1)[1]
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {
            "queue": queue
        }
        assert metric["external"]["target"]["averageValue"] == "2"
        assert hpa["spec"]["behavior"]["scaleDown"]["policies"]
    for hpa in cpu:
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_grace_period_follows_a_raised_hard_time_limit() -> None:
    docs = manifests(
        "default",
        "config.hardTimeLimitSeconds=3600",
        "config.softTimeLimitSeconds=3500",
        "config.visibilityTimeoutSeconds=4000",
    )

    for worker in _workers(docs):
        assert (
            worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3630
        )


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["worker.terminationGracePeriodSeconds=60"],
            "worker.terminationGracePeriodSeconds (60) must be at least "
            "config.hardTimeLimitSeconds (360)",
        ),
        (
            ["config.visibilityTimeoutSeconds=100"],
            "must exceed config.hardTimeLimitSeconds",
        ),
        (
            ["config.softTimeLimitSeconds=400"],
            "must be below config.hardTimeLimitSeconds",
        ),
        (["redis.enabled=false"], "externalRedis.host is empty"),
        (["storage.type=s3"], "set storage.s3.bucket and storage.s3.existingSecret"),
        (["storage.type=hostPath"], "storage.hostPath.path is empty"),
        (["storage.type=nfs"], 'storage.type "nfs" is unknown'),
        (["autoscaling.mode=vpa"], 'autoscaling.mode "vpa" is unknown'),
        (
            ["autoscaling.mode=hpa", "autoscaling.minReplicas=0"],
            "an HPA cannot scale to zero",
        ),
        (
            ["autoscaling.mode=keda", "autoscaling.keda.trigger=redis"],
            'autoscaling.keda.trigger "redis" is unknown',
        ),
        (
            [
                "autoscaling.mode=keda",
                "autoscaling.keda.trigger=prometheus",
                "autoscaling.keda.prometheus.query=up",
            ],
            "must contain %s",
        ),
        (
            ["worker.softShutdownSeconds=400"],
            "worker.softShutdownSeconds (400) must be below",
        ),
        (
            [
                "worker.softShutdownSeconds=60",
                "worker.terminationGracePeriodSeconds=65",
            ],
            "must exceed worker.softShutdownSeconds (60) by at least 10 s",
        ),
        (["beat.enabled=true"], "beat.schedule is empty"),
        (["worker.heartbeat.maxAgeSeconds=20"], "worker.heartbeat.maxAgeSeconds (20)"),
        (
            [
                "worker.queues.images.enabled=false",
                "worker.queues.tables.enabled=false",
            ],
            "no queue is enabled",
        ),
    ],
)
def test_bad_values_fail_with_a_readable_message(sets: list[str], message: str) -> None:
    with pytest.raises(RenderError) as failure:
        render("default", *sets)

    assert message in failure.value.args[0]
    assert "the values need fixing" in failure.value.args[0]


def test_bad_values_are_reported_together() -> None:
    with pytest.raises(RenderError) as failure:
        render("default", "storage.type=hostPath", "beat.enabled=true")

    assert "storage.hostPath.path" in failure.value.args[0]
    assert "beat.schedule" in failure.value.args[0]


def test_redis_keeps_an_fsynced_append_only_file_on_a_pvc() -> None:
    docs = manifests("default")
    (statefulset,) = of_kind(docs, "StatefulSet")
    (config,) = [
        doc
        for doc in of_kind(docs, "ConfigMap")
        if doc["metadata"]["name"] == "batchgrid-redis"
    ]
    conf = config["data"]["redis.conf"]

    assert re.search(r"^appendonly yes$", conf, re.M)
    assert re.search(r"^appendfsync everysec$", conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)
    data_dir = re.search(r"^dir (\S+)$", conf, re.M)
    assert data_dir
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir[1]} in mounts
    assert statefulset["spec"]["replicas"] == 1


def test_redis_pod_does_not_change_with_the_chart_version_alone() -> None:
    (statefulset,) = of_kind(manifests("default"), "StatefulSet")

    labels = statefulset["spec"]["template"]["metadata"]["labels"]

    assert "helm.sh/chart" not in labels
    assert "app.kubernetes.io/version" not in labels
    assert labels["app.kubernetes.io/component"] == "redis"


def test_redis_has_a_headless_service_and_a_generated_password() -> None:
    docs = manifests("default")
    (service,) = [
        doc for doc in of_kind(docs, "Service") if "redis" in doc["metadata"]["name"]
    ]
    (statefulset,) = of_kind(docs, "StatefulSet")
    (secret,) = of_kind(docs, "Secret")

    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert len(secret_values((secret,)).pop()) == 32


def test_external_redis_builds_a_tls_url_from_its_secret() -> None:
    docs = manifests("external-redis")
    (worker, *_) = _workers(docs)
    env = _env(worker["spec"]["template"]["spec"]["containers"][0])

    assert not of_kind(docs, "StatefulSet")
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "managed-redis",
        "key": "password",
    }
    assert env["BATCHGRID_BROKER_URL"]["value"] == (
        "rediss://batchgrid:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
    )


def test_external_redis_acl_user_is_how_keda_logs_in_too() -> None:
    docs = manifests("external-redis")

    for worker in _workers(docs):
        env = _env(worker["spec"]["template"]["spec"]["containers"][0])
        assert env["REDIS_USERNAME"]["value"] == "batchgrid"
    floors = [_triggers(doc)["redis"] for doc in of_kind(docs, "ScaledObject")]
    assert floors and all(
        floor["metadata"]["usernameFromEnv"] == "REDIS_USERNAME"
        and floor["metadata"]["enableTLS"] == "true"
        for floor in floors
    )
    assert all(
        "usernameFromEnv" not in _triggers(doc)["redis"]["metadata"]
        for doc in of_kind(manifests("keda"), "ScaledObject")
    )


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (Mi, Gi or plain bytes) in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


@pytest.mark.parametrize("values", ["default", "kind"])
def test_worker_task_memory_limit_leaves_room_under_the_pod_limit(values: str) -> None:
    docs = manifests() if values == "default" else tuple(_kind_demo("values-kind.yaml"))

    workers = _workers(docs)

    assert workers
    for worker in workers:
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        flags = dict(arg.split("=", 1) for arg in container["args"] if "=" in arg)
        per_task = int(_env(container)["BATCHGRID_MAX_TASK_MEMORY_BYTES"]["value"])
        limit = _bytes(container["resources"]["limits"]["memory"])
        used = int(flags["--concurrency"]) * (per_task + (200 << 20))
        # Each pool process holds about 200 MiB before its task allocates.
        assert 0 < used <= limit, worker["metadata"]["name"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_locked_down(scenario: str) -> None:
    for name, spec in pod_specs(manifests(scenario)):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            seccomp = context.get("seccompProfile") or pod.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert "resources" in container and container["resources"]["requests"], (
                where
            )


def test_workers_have_one_deployment_per_queue_spread_over_nodes() -> None:
    workers = _workers(manifests("default"))

    assert [w["metadata"]["name"] for w in workers] == [
        "batchgrid-worker-images",
        "batchgrid-worker-tables",
    ]
    for worker in workers:
        spec = worker["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        queue = worker["metadata"]["name"].removeprefix("batchgrid-worker-")
        assert f"--queues={queue}" in container["args"]
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert (
            spread["labelSelector"]["matchLabels"]
            == worker["spec"]["selector"]["matchLabels"]
        )
        node = _env(container)["NODE_NAME"]
        assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_worker_liveness_reads_the_heartbeat_file_without_starting_python() -> None:
    for worker in _workers(manifests("default")):
        spec = worker["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        heartbeat = _env(container)["BATCHGRID_HEARTBEAT_FILE"]["value"]
        probe = " ".join(container["livenessProbe"]["exec"]["command"])

        assert heartbeat in probe
        assert not re.search(r"python|celery|batchgrid ", probe)
        writable = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(heartbeat).parent.parent) in writable
        assert _env(container)["BATCHGRID_METRICS_DIR"]["value"] in writable
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["metrics"]


def test_workload_selectors_never_overlap() -> None:
    docs = manifests("monitoring")
    selectors = [
        json.dumps(doc["spec"]["selector"]["matchLabels"], sort_keys=True)
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet")
    ]

    assert len(selectors) == len(set(selectors))


def test_beat_runs_exactly_one_replica_with_recreate() -> None:
    docs = manifests("auth")
    (beat,) = [
        d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["name"] == "batchgrid-beat"
    ]
    container = beat["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    probe = " ".join(container["livenessProbe"]["exec"]["command"])

    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert json.loads(env["BATCHGRID_SCHEDULE"]["value"])[0]["name"] == "nightly-delays"
    assert env["BATCHGRID_HEARTBEAT_FILE"]["value"] in probe
    assert not re.search(r"python|celery|batchgrid ", probe)


def test_producer_probes_health_routes_and_serves_behind_a_service() -> None:
    docs = manifests("auth")
    (producer,) = [
        d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["name"] == "batchgrid-producer"
    ]
    container = producer["spec"]["template"]["spec"]["containers"][0]
    (ingress,) = of_kind(docs, "Ingress")

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = producer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause > 0 and grace >= pause + 30  # then uvicorn's 30 s
    assert _env(container)["BATCHGRID_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ingress["spec"]["tls"][0]["secretName"] == "batchgrid-tls"


def test_network_policy_lets_only_the_release_reach_redis() -> None:
    docs = manifests("keda")
    (policy,) = of_kind(docs, "NetworkPolicy")
    (statefulset,) = of_kind(docs, "StatefulSet")
    (redis_rule,) = policy["spec"]["ingress"]

    assert policy["spec"]["podSelector"] == statefulset["spec"]["selector"]
    sources = redis_rule["from"]
    assert sources[0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "batchgrid",
        "app.kubernetes.io/instance": "batchgrid",
    }
    assert sources[1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "keda"
    }
    assert redis_rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


def test_keda_reads_the_redis_password_from_its_secret() -> None:
    docs = manifests("keda")
    (auth,) = [
        doc
        for doc in of_kind(docs, "TriggerAuthentication")
        if doc["metadata"]["name"] == "batchgrid-redis-auth"
    ]

    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "batchgrid-redis", "key": "redis-password"}
    ]
    for worker in _workers(docs):
        assert "replicas" not in worker["spec"]


def test_s3_storage_sets_the_root_and_credentials_from_a_secret() -> None:
    docs = manifests("s3")
    worker = _workers(docs)[0]["spec"]["template"]["spec"]
    env = _env(worker["containers"][0])

    assert _config(docs)["BATCHGRID_STORAGE_ROOTS"] == "s3://batchgrid-data/jobs"
    assert (
        env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"]
        == "batchgrid-s3"
    )
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    assert "data" not in {v["name"] for v in worker["volumes"]}


def test_helm_test_hook_submits_a_job_to_the_producer() -> None:
    docs = manifests("auth")
    (pod,) = of_kind(docs, "Pod")
    env = _env(pod["spec"]["containers"][0])

    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        env["BATCHGRID_API_URL"]["value"]
        == "http://batchgrid-producer.batchgrid.svc:80"
    )
    assert "BATCHGRID_API_TOKEN" in env
    assert '"table"' in pod["spec"]["containers"][0]["args"][0]


def test_monitoring_objects_carry_the_metrics_files() -> None:
    docs = manifests("monitoring")
    (rule,) = of_kind(docs, "PrometheusRule")
    (dashboard,) = [
        d
        for d in of_kind(docs, "ConfigMap")
        if d["metadata"]["name"] == "batchgrid-dashboard"
    ]
    source_rules = yaml.safe_load(
        (CHART / "files" / "prometheus-rules.yaml").read_text()
    )

    assert rule["spec"]["groups"] == source_rules["groups"]
    assert json.loads(dashboard["data"]["batchgrid.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text()
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_notes_name_the_next_commands() -> None:
    done = helm(
        "install",
        "batchgrid",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        "batchgrid",
    )

    assert "helm test batchgrid --namespace batchgrid" in done.stdout
    assert (
        "kubectl --namespace batchgrid port-forward service/batchgrid-producer"
        in done.stdout
    )
    # The default registry has no images yet: the user is told before pods fail.
    assert "no batchgrid images are published" in done.stdout


def test_notes_say_nothing_of_unpublished_images_once_a_registry_is_set() -> None:
    done = helm(
        "install",
        "batchgrid",
        str(CHART),
        "--dry-run=client",
        "--set",
        "image.registry=registry.example.com",
    )

    assert "no batchgrid images are published" not in done.stdout


def test_checkov_passes_with_every_skip_explained(tmp_path: Path) -> None:
    checkov = require_tool(CHECKOV)
    for scenario in SCENARIOS:
        (tmp_path / f"{scenario}.yaml").write_text(render(scenario))

    done = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-check",
            ",".join(CHECKOV_SKIPS),
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert all(len(reason) > 30 for reason in CHECKOV_SKIPS.values())
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    assert sum(r["summary"]["passed"] for r in reports) > 500, "checkov checked nothing"
    annotated = re.findall(
        r"checkov\.io/skip\d+: (\S+)=(.*)",
        "".join(p.read_text() for p in tmp_path.glob("*.yaml")),
    )
    assert all(len(reason) > 20 for _, reason in annotated)
    assert not failed, [
        f"{check['check_id']} {check['check_name']}: {check['resource']}"
        for check in failed
    ]
    assert done.returncode == 0, done.stderr[-2000:]


def test_chart_readme_and_schema_are_generated_from_values(tmp_path: Path) -> None:
    generator = require_tool(README_GENERATOR)
    readme = tmp_path / "README.md"
    schema = tmp_path / "values.schema.json"
    shutil.copy(CHART / "README.md", readme)

    subprocess.run(
        [
            str(generator),
            "--values",
            str(CHART / "values.yaml"),
            "--readme",
            str(readme),
            "--schema",
            str(schema),
        ],
        capture_output=True,
        check=True,
        timeout=120,
        # Node.js from the wheel `make tools` installs, ahead of any system one.
        env={**os.environ, "PATH": f"{NODEJS_BIN}{os.pathsep}{os.environ['PATH']}"},
    )

    assert readme.read_text() == (CHART / "README.md").read_text(), (
        "run make chart-docs"
    )
    assert schema.read_text() == (CHART / "values.schema.json").read_text(), (
        "run make chart-docs"
    )


def _kind_demo(*files: str) -> list[dict[str, Any]]:
    """The release `make deploy` installs on kind, rendered as `make deploy` does."""
    args = ["template", "batchgrid", str(CHART), "--namespace", "batchgrid"]
    for name in files:
        args += ["-f", str(ROOT / "k8s" / name)]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


@pytest.mark.parametrize(
    "files", [("values-kind.yaml",), ("values-kind.yaml", "values-kind-hpa.yaml")]
)
def test_kind_demo_values_render_valid_objects_with_the_loaded_images(
    files: tuple[str, ...],
) -> None:
    docs = _kind_demo(*files)

    problems = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            problems += [f"{name}: {p}" for p in check_custom_resource(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, "1.35.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {exc.message}")
    assert not problems, "\n".join(problems)
    own = [
        container
        for _, spec in pod_specs(tuple(docs))
        for container in spec["containers"]
        if "/batchgrid/" in container["image"]
    ]
    # `make images` tags docker.io/batchgrid/...:dev and `kind load`s exactly those.
    assert own and all(
        c["image"].startswith("docker.io/batchgrid/batchgrid-")
        and c["image"].endswith(":dev")
        and c["imagePullPolicy"] == "Never"
        for c in own
    ), [(c["image"], c.get("imagePullPolicy")) for c in own]
    # Nothing loads the others onto the nodes: they must be pulled.
    others = [
        (container["image"], container["imagePullPolicy"])
        for _, spec in pod_specs(tuple(docs))
        for container in [*spec["containers"], *spec.get("initContainers", [])]
        if "/batchgrid/" not in container["image"]
    ]
    assert others and all(policy == "IfNotPresent" for _, policy in others), others


def test_kind_demo_objects_carry_the_names_the_demo_targets_use() -> None:
    docs = _kind_demo("values-kind.yaml")

    deployments = {d["metadata"]["name"] for d in of_kind(tuple(docs), "Deployment")}
    services = {s["metadata"]["name"]: s for s in of_kind(tuple(docs), "Service")}
    scaled = {s["metadata"]["name"] for s in of_kind(tuple(docs), "ScaledObject")}

    # Makefile: `kubectl exec deploy/batchgrid-producer`; kube.py: the producer
    # Service's port `http` and the worker Deployments `batchgrid-worker-<queue>`.
    assert {"batchgrid-producer", "batchgrid-worker-images"} <= deployments
    assert "batchgrid-worker-tables" in deployments
    ports = services["batchgrid-producer"]["spec"]["ports"]
    assert "http" in {port["name"] for port in ports}
    assert len(scaled) == 2


def test_flower_asks_for_basic_auth_with_a_password_from_a_secret() -> None:
    docs = manifests("monitoring", "flower.enabled=true")

    [flower] = [
        d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["name"].endswith("-flower")
    ]
    env = _env(flower["spec"]["template"]["spec"]["containers"][0])
    secret_names = {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
    password = env["FLOWER_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password["name"] in secret_names
    assert env["FLOWER_BASIC_AUTH"]["value"] == "admin:$(FLOWER_PASSWORD)"
