"""The Kubernetes manifests (deploy/k8s), checked offline: no cluster, nothing downloaded.

* The drift test: one Deployment per ``Queue`` whose command is exactly ``worker_command(queue)``, read
  from the base's YAML with PyYAML (never skipped), and the same in both rendered overlays; every
  other service of docker-compose.yml that runs the project's code has a Kubernetes twin with the
  same command.
* ``kubectl kustomize`` renders both overlays (a test fails, saying why, when neither ``kubectl``
  nor ``kustomize`` is on the PATH: never a silent skip); the render passes ``kubernetes-validate
  --strict`` for the core kinds (the schemas it ships for Kubernetes ``K8S_VERSION``, offline), and
  the KEDA ScaledObjects pass the schema subset committed in deploy/k8s/schemas (written after
  KEDA's CRD: its header says which).
* What the manifests promise (docs/KUBERNETES.md): security contexts, PDBs, network policies, probes
  (the workers' from the heartbeat file of worker/liveness.py), beat and stream single and Recreate,
  the GPU worker, the migration Job and the schema gate every database user waits behind (its script
  run against SQLite at each revision), KEDA on the right queues, Secrets and settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from core.settings import Settings, reset_settings_cache
from tests.support.scripts import load_script
from worker.queues import WORKER_OPTIONS, Queue, worker_command

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "prod")
NAMESPACES = {"dev": "mlsignals-dev", "prod": "mlsignals"}
# kubernetes-validate's schemas: the release deploys with kubectl 1.32 (.github/workflows/release.yml).
K8S_VERSION = "1.32.0"
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject-v1alpha1.schema.json"
GATE_SCRIPT = BASE / "wait_for_schema.py"
LIVENESS = "/app/worker/liveness.py"

# The queues KEDA scales (prod), and the ones it must never touch.
SCALED = {Queue.FEATURES, Queue.ORDERS}
# Deployments that never use the database: no schema gate.
NO_DATABASE = {"mlsignals-beat", "mlsignals-flower"}
# Mounts of the model registry that may write it.
REGISTRY_WRITERS = {"mlsignals-worker-control", "mlsignals-mcp-model"}
HEARTBEAT_S = 10.0  # worker/liveness.py DEFAULT_INTERVAL_S


def deployment_name(queue: Queue) -> str:
    return f"mlsignals-worker-{queue.value}"


# --------------------------------------------------------------------------------------- readers


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def base_documents() -> tuple[dict[str, Any], ...]:
    """The base's own YAML files, as written (no kustomize)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return tuple(d for name in kustomization["resources"] for d in load_all(BASE / name))


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    command = kustomize_command()
    if command is None:
        # A failure, not a skip: `make test` must never pass without having rendered the overlays.
        pytest.fail(
            "neither kubectl nor kustomize is on the PATH: the manifest tests render the overlays with "
            "`kubectl kustomize`; install kubectl (it ships kustomize)"
        )
    result = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kustomize failed for {overlay}:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def of_kind(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    container: dict[str, Any] = containers[0]
    return container


def all_containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "Job")}


def ours(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """Workloads running the project's images (not the dev overlay's Redis and PostgreSQL)."""
    return {
        name: w
        for name, w in workloads(docs).items()
        if re.search(r"(^|/)mlsignals(-gpu)?:", main_container(w)["image"])
    }


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels only, as these manifests use) against a pod's labels."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"
    ]
    return services


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with the variable unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m[1], text)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ------------------------------------------------------------------------- drift: queues, compose


@pytest.mark.parametrize("queue", list(Queue), ids=str)
def test_base_has_a_deployment_per_queue_running_worker_command(queue: Queue) -> None:
    deployments = of_kind(list(base_documents()), "Deployment")
    deployment = deployments.get(deployment_name(queue))
    assert deployment is not None, f"deploy/k8s/base has no Deployment {deployment_name(queue)}"
    assert main_container(deployment)["command"] == worker_command(queue)
    assert "args" not in main_container(deployment)
    assert pod_labels(deployment)["mlsignals.io/queue"] == queue.value


def test_base_runs_celery_workers_only_for_queues() -> None:
    expected = {deployment_name(q) for q in Queue}
    for name, deployment in of_kind(list(base_documents()), "Deployment").items():
        command = main_container(deployment)["command"]
        if command[:1] == ["celery"] and "worker" in command[3:4]:
            assert name in expected, f"{name} runs a Celery worker outside the Queue enum"
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert {f"workers/{q.value}.yaml" for q in Queue} <= set(kustomization["resources"])


def test_every_overlay_keeps_the_worker_commands(overlay: str) -> None:
    deployments = of_kind(rendered(overlay), "Deployment")
    for queue in Queue:
        assert main_container(deployments[deployment_name(queue)])["command"] == worker_command(queue)
    workers = {
        n for n, d in deployments.items() if pod_labels(d).get("app.kubernetes.io/component") == "worker"
    }
    assert workers == {deployment_name(q) for q in Queue}


def test_every_compose_service_of_the_project_has_a_twin_with_the_same_command() -> None:
    """docker-compose.yml and the manifests run the same commands (workers through worker_command)."""
    twins = {
        "migrate": "mlsignals-migrate",
        "beat": "mlsignals-beat",
        "stream": "mlsignals-stream",
        "flower": "mlsignals-flower",
        "metrics": "mlsignals-metrics",
        "mcp-data": "mlsignals-mcp-data",
        "mcp-signal": "mlsignals-mcp-signal",
        "mcp-model": "mlsignals-mcp-model",
        **{q.value: deployment_name(q) for q in Queue},
    }
    docs = workloads(base_documents())
    project = {
        name
        for name, svc in compose_services().items()
        if re.match(r"mlsignals(-gpu)?:", interpolate(str(svc.get("image", ""))))
    }
    assert project == set(twins), "a compose service of the project's images has no Kubernetes twin"
    for service, name in twins.items():
        command = [str(a) for a in compose_services()[service]["command"]]
        assert main_container(docs[name])["command"] == command, f"{service} vs {name}"


# ------------------------------------------------------------------------------ render, validate


def test_overlays_render_into_one_namespace(overlay: str) -> None:
    docs = rendered(overlay)
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {NAMESPACES[overlay]}
    assert set(of_kind(docs, "Namespace")) == {NAMESPACES[overlay]}
    assert of_kind(docs, "Job"), "no migration Job"


def test_core_kinds_pass_kubernetes_validate_strict(overlay: str) -> None:
    import kubernetes_validate  # a dev dependency: its absence is a failure, not a skip
    checked = 0
    errors: list[str] = []
    for doc in rendered(overlay):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked against KEDA's schema below
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert not errors, "\n".join(errors)
    assert checked >= 40


@cache
def keda_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_keda_schema_subset_names_its_source() -> None:
    comment = json.loads(KEDA_SCHEMA.read_text())["$comment"]
    assert "v2.20.2" in comment
    assert (
        "https://github.com/kedacore/keda/blob/v2.20.2/config/crd/bases/keda.sh_scaledobjects.yaml" in comment
    )


def test_scaled_objects_pass_the_keda_schema() -> None:
    scaled = of_kind(rendered("prod"), "ScaledObject")
    assert scaled
    for name, obj in scaled.items():
        errors = [f"{list(e.path)}: {e.message}" for e in keda_validator().iter_errors(obj)]
        assert not errors, f"{name}: {errors}"
        spec = obj["spec"]
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"], f"{name}: KEDA's CEL rule"


def test_keda_schema_rejects_what_the_crd_rejects() -> None:
    obj = next(iter(of_kind(rendered("prod"), "ScaledObject").values()))
    for mutate in (
        lambda o: o["spec"].update(minReplicaCount=-1),
        lambda o: o["spec"].update(maxReplicaCount=0),
        lambda o: o["spec"].update(minReplicas=2),  # a typo the API server would prune silently
        lambda o: o["spec"].pop("triggers"),
        lambda o: o["spec"]["triggers"][0]["metadata"].update(threshold=2),  # metadata values are strings
        lambda o: o["spec"]["triggers"][0]["metadata"].pop("query"),
        lambda o: o["spec"]["fallback"].pop("replicas"),
    ):
        copy = json.loads(json.dumps(obj))
        mutate(copy)
        assert list(keda_validator().iter_errors(copy)), f"accepted: {copy['spec']}"


# --------------------------------------------------------------------------------------- KEDA


def tasks_per_pod(deployment: dict[str, Any], queue: Queue) -> int:
    """How many tasks one pod runs at once: its --concurrency, else CELERY_WORKER_CONCURRENCY."""
    options = WORKER_OPTIONS[queue]
    if "--concurrency" in options:
        return int(options[options.index("--concurrency") + 1])
    return int(env_of(main_container(deployment))["CELERY_WORKER_CONCURRENCY"])


@pytest.mark.parametrize("queue", sorted(SCALED), ids=str)
def test_scaled_queue_has_a_scaled_object_on_its_queue_depth(queue: Queue) -> None:
    docs = rendered("prod")
    name = deployment_name(queue)
    scaled = [
        o for o in of_kind(docs, "ScaledObject").values() if o["spec"]["scaleTargetRef"]["name"] == name
    ]
    assert len(scaled) == 1, f"one ScaledObject must target {name}"
    spec = scaled[0]["spec"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] >= 1, "never scaled to zero: the minute cannot wait for a pod"
    assert (
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        >= 300
    ), "a once-a-minute burst must not flap the pool"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    # Ready and reserved messages of this queue (LLEN alone misses the reserved ones).
    assert f'mlsignals_queue_messages{{queue="{queue.value}"}}' in query
    assert f'mlsignals_queue_unacked_messages{{queue="{queue.value}"}}' in query
    assert trigger["metadata"]["threshold"] == str(tasks_per_pod(of_kind(docs, "Deployment")[name], queue))
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]
    # The HPA owns the count: a replica count in the manifest would reset it on every apply.
    assert "replicas" not in of_kind(docs, "Deployment")[name]["spec"]


def test_the_scaling_metrics_are_the_exporters() -> None:
    """The series the triggers read are served by monitoring/ and documented in docs/MONITORING.md."""
    source = (ROOT / "monitoring" / "state_metrics.py").read_text()
    docs = (ROOT / "docs" / "MONITORING.md").read_text()
    for obj in of_kind(rendered("prod"), "ScaledObject").values():
        for metric in re.findall(r"\b(mlsignals_\w+)\{", obj["spec"]["triggers"][0]["metadata"]["query"]):
            assert f'"{metric}"' in source, metric
            assert f"`{metric}`" in docs, metric


def test_only_the_scaled_queues_are_autoscaled(overlay: str) -> None:
    targets = {
        o["spec"]["scaleTargetRef"]["name"] for o in of_kind(rendered(overlay), "ScaledObject").values()
    }
    assert targets == ({deployment_name(q) for q in SCALED} if overlay == "prod" else set())
    assert not of_kind(rendered(overlay), "HorizontalPodAutoscaler")


# ---------------------------------------------------------------------------- security context


def test_every_pod_and_container_is_locked_down(overlay: str) -> None:
    for name, workload in workloads(rendered(overlay)).items():
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for container in all_containers(workload):
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities") == {"drop": ["ALL"]}, where
            assert sc.get("seccompProfile", pod.get("seccompProfile")) == {"type": "RuntimeDefault"}, where
            assert not sc.get("privileged"), where


def test_project_pods_run_as_the_image_user_with_writable_tmp_only(overlay: str) -> None:
    for name, workload in ours(rendered(overlay)).items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsUser"] == 10001, name  # docker/Dockerfile's `app`
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in all_containers(workload):
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{name}/{container['name']}: /tmp"
            for path, mount in mounts.items():
                volume = volumes[mount["name"]]
                writable = not mount.get("readOnly", False)
                assert not writable or "emptyDir" in volume or path == "/data/models", f"{name}: {path}"


def test_namespace_enforces_the_restricted_pod_security_standard(overlay: str) -> None:
    labels = of_kind(rendered(overlay), "Namespace")[NAMESPACES[overlay]]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# -------------------------------------------------------------------------------- PDBs, policies


def test_every_deployment_has_a_disruption_budget(overlay: str) -> None:
    docs = rendered(overlay)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for name, deployment in ours(docs).items():
        if deployment["kind"] != "Deployment":
            continue
        matching = [p for p in pdbs.values() if selects(p["spec"]["selector"], pod_labels(deployment))]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        spec = matching[0]["spec"]
        assert spec.get("maxUnavailable") == 1, name
        assert "minAvailable" not in spec, name
        assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", name


def policies_selecting(docs: tuple[dict[str, Any], ...], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in of_kind(docs, "NetworkPolicy").values() if selects(p["spec"]["podSelector"], labels)]


def test_network_policy_denies_by_default(overlay: str) -> None:
    policies = of_kind(rendered(overlay), "NetworkPolicy")
    deny = [p for p in policies.values() if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    spec = deny[0]["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress")
    assert not spec.get("egress")


def allowed_egress(policies: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    """(protocol, port, rule) for every egress port any of ``policies`` opens."""
    out = []
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            assert rule.get("ports"), f"{policy['metadata']['name']}: an egress rule without ports opens all"
            out += [(p.get("protocol", "TCP"), int(p["port"]), rule) for p in rule["ports"]]
    return out


@pytest.mark.parametrize("queue", list(Queue), ids=str)
def test_workers_reach_redis_postgres_dns_and_the_exchange_and_nothing_reaches_them(queue: Queue) -> None:
    docs = rendered("prod")
    labels = pod_labels(of_kind(docs, "Deployment")[deployment_name(queue)])
    policies = policies_selecting(docs, labels)
    assert not [p["metadata"]["name"] for p in policies if p["spec"].get("ingress")], "no ingress to workers"
    assert all("Ingress" in p["spec"]["policyTypes"] for p in policies if p["spec"]["podSelector"] == {})
    egress = allowed_egress(policies)
    ports = {(proto, port) for proto, port, _ in egress}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 5432), ("TCP", 443)}
    for _, port, rule in egress:
        if port == 443:
            blocks = [peer["ipBlock"] for peer in rule["to"]]
            v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
            # The internet, not the cluster, the VPC or the cloud's metadata service.
            assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])


def test_only_flower_mcp_and_metrics_accept_connections() -> None:
    docs = rendered("prod")
    open_ports: dict[str, set[int]] = {}
    for name, workload in ours(docs).items():
        for policy in policies_selecting(docs, pod_labels(workload)):
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy['metadata']['name']}: ingress from anywhere"
                open_ports.setdefault(name, set()).update(p["port"] for p in rule["ports"])
    assert open_ports == {
        "mlsignals-flower": {5555},
        "mlsignals-metrics": {9500},
        "mlsignals-mcp-data": {8765},
        "mlsignals-mcp-signal": {8765},
        "mlsignals-mcp-model": {8765},
    }


# ------------------------------------------------------------------------------------------ probes


def liveness_check(probe: dict[str, Any]) -> dict[str, float]:
    """The options of a probe that runs worker/liveness.py (an error for any other probe)."""
    command = probe["exec"]["command"]
    assert command[:3] == ["python", "-P", LIVENESS], command
    options = command[3:]
    return {options[i].lstrip("-"): float(options[i + 1]) for i in range(0, len(options), 2)}


def test_the_probe_script_is_where_the_image_puts_it() -> None:
    assert (ROOT / LIVENESS.removeprefix("/app/")).is_file()
    for dockerfile in ("docker/Dockerfile", "docker/Dockerfile.gpu"):
        text = (ROOT / dockerfile).read_text()
        assert "WORKDIR /app" in text, dockerfile
        assert "COPY . /app" in text, dockerfile


@pytest.mark.parametrize("queue", list(Queue), ids=str)
def test_worker_probes_read_the_heartbeat_file(queue: Queue) -> None:
    container = main_container(of_kind(rendered("prod"), "Deployment")[deployment_name(queue)])
    assert env_of(container)["MLSIGNALS_LIVENESS_FILE"].startswith("/tmp/")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "celery" not in json.dumps(container[kind]), f"{kind}: no `celery inspect ping`"
        liveness_check(container[kind])
    live = liveness_check(container["livenessProbe"])
    # Several missed touches before a restart; a solo pool's task holds the loop up to its time limit.
    assert live["max-age"] >= 3 * HEARTBEAT_S
    if "solo" in WORKER_OPTIONS[queue]:
        assert live["max-age"] >= 120
    ready = liveness_check(container["readinessProbe"])
    assert ready["reconnect-grace"] == 0, "not ready while the broker is away"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "broker, database, model load"


def test_services_have_http_probes_on_their_port() -> None:
    expected = {
        "mlsignals-flower": "/healthcheck",
        "mlsignals-metrics": "/metrics",
        "mlsignals-mcp-data": "/healthz",
        "mlsignals-mcp-signal": "/healthz",
        "mlsignals-mcp-model": "/healthz",
    }
    docs = rendered("prod")
    services = of_kind(docs, "Service")
    for name, path in expected.items():
        container = main_container(of_kind(docs, "Deployment")[name])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[kind]["httpGet"]["path"] == path, f"{name} {kind}"
            assert container[kind]["httpGet"]["port"] in ports, f"{name} {kind}"
        service = services[name]
        assert selects(
            {"matchLabels": service["spec"]["selector"]}, pod_labels(of_kind(docs, "Deployment")[name])
        )
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)


def test_beat_and_stream_have_liveness_probes() -> None:
    deployments = of_kind(rendered("prod"), "Deployment")
    beat = main_container(deployments["mlsignals-beat"])
    check = " ".join(beat["livenessProbe"]["exec"]["command"])
    assert "inspect ping" in check
    assert "celerybeat@$HOSTNAME" in check
    node = beat["command"][beat["command"].index("-n") + 1]
    assert node == "celerybeat@%h"
    assert "--enable-remote-control" in beat["command"]
    assert "MLSIG_CELERY__BROKER_URL" not in check, "the broker URL (a password) stays off the command line"
    assert env_of(beat)["CELERY_BROKER_URL"]["secretKeyRef"]["key"] == "MLSIG_CELERY__BROKER_URL"
    stream = main_container(deployments["mlsignals-stream"])
    assert stream["livenessProbe"]["exec"]["command"] == ["mlsignals", "data", "stream-status"]


# ------------------------------------------------------------------------ singletons, GPU, images


@pytest.mark.parametrize("name", ["mlsignals-beat", "mlsignals-stream"])
def test_beat_and_stream_are_single_and_recreated(overlay: str, name: str) -> None:
    docs = rendered(overlay)
    deployment = of_kind(docs, "Deployment")[name]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert name not in {o["spec"]["scaleTargetRef"]["name"] for o in of_kind(docs, "ScaledObject").values()}


def test_inference_runs_on_a_gpu_node_with_the_gpu_image() -> None:
    docs = rendered("prod")
    deployment = of_kind(docs, "Deployment")[deployment_name(Queue.INFERENCE)]
    spec = pod_spec(deployment)
    container = main_container(deployment)
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert re.search(r"/mlsignals-gpu:", container["image"])
    assert all(c["image"] == container["image"] for c in all_containers(deployment)), "gate in the same image"
    assert env_of(container)["MLSIG_MODEL__DEVICE"] == "cuda"
    # Never scaled to zero; the prod overlay keeps a warm standby; a rollout needs no spare GPU.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # Every other pod runs the CPU image and asks for no GPU.
    for name, workload in ours(docs).items():
        if name != deployment_name(Queue.INFERENCE):
            for c in all_containers(workload):
                assert re.search(r"/mlsignals:", c["image"]), name
                assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {})), name


def test_base_images_are_the_compose_images() -> None:
    """The base names docker/Dockerfile's and docker/Dockerfile.gpu's images as compose tags them."""
    compose = compose_services()
    deployments = of_kind(list(base_documents()), "Deployment")
    assert main_container(deployments[deployment_name(Queue.INFERENCE)])["image"] == interpolate(
        compose["inference"]["image"]
    )
    assert main_container(deployments[deployment_name(Queue.CONTROL)])["image"] == interpolate(
        compose["control"]["image"]
    )
    assert "mlsignals-gpu:dev" in (ROOT / "docker" / "Dockerfile.gpu").read_text()


def test_dev_runs_inference_on_the_cpu() -> None:
    deployment = of_kind(rendered("dev"), "Deployment")[deployment_name(Queue.INFERENCE)]
    container = main_container(deployment)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nodeSelector" not in pod_spec(deployment)
    assert "tolerations" not in pod_spec(deployment)
    assert env_of(container)["MLSIG_MODEL__DEVICE"] == "cpu"
    assert container["image"] == "mlsignals:dev"


def test_prod_images_carry_one_tag_for_the_release_workflow() -> None:
    images = {c["image"] for w in ours(rendered("prod")).values() for c in all_containers(w)}
    assert {i.rsplit(":", 1)[1] for i in images} == {"set-by-release"}
    assert {i.rsplit(":", 1)[0].rsplit("/", 1)[1] for i in images} == {"mlsignals", "mlsignals-gpu"}


# --------------------------------------------------------------------------------------- resources


def test_every_container_has_requests_and_limits(overlay: str) -> None:
    def quantity(value: str | int) -> float:
        text = str(value)
        units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        for suffix, factor in units.items():
            if text.endswith(suffix):
                return float(text[: -len(suffix)]) * factor
        return float(text)

    for name, workload in workloads(rendered(overlay)).items():
        for container in all_containers(workload):
            res = container["resources"]
            for key in ("cpu", "memory"):
                request, limit = quantity(res["requests"][key]), quantity(res["limits"][key])
                assert 0 < request <= limit, f"{name}/{container['name']} {key}"
            concurrency = env_of(container).get("CELERY_WORKER_CONCURRENCY")
            if concurrency is not None:
                assert int(concurrency) <= quantity(res["limits"]["cpu"]), f"{name}: more children than CPUs"


def test_resource_figures_are_in_the_manifests_comments() -> None:
    for queue in Queue:
        text = (BASE / "workers" / f"{queue.value}.yaml").read_text()
        assert "benchmarks/bench_resources.py" in text, queue
        assert "measured" in text, queue


# ----------------------------------------------------------------------------------- migrations


def gate_module() -> ModuleType:
    return load_script("wait_for_schema", GATE_SCRIPT)


def test_the_migration_job_upgrades_the_schema(overlay: str) -> None:
    jobs = of_kind(rendered(overlay), "Job")
    job = jobs["mlsignals-migrate"]
    assert main_container(job)["command"] == ["mlsignals", "db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1


def test_every_database_user_waits_for_the_schema_behind_the_gate(overlay: str) -> None:
    docs = rendered(overlay)
    gates = [
        c
        for c in of_kind(docs, "ConfigMap").values()
        if c["metadata"]["name"].startswith("mlsignals-schema-gate")
    ]
    assert len(gates) == 1
    assert gates[0]["data"]["wait_for_schema.py"] == GATE_SCRIPT.read_text()
    for name, deployment in ours(docs).items():
        if deployment["kind"] != "Deployment":
            continue
        init = pod_spec(deployment).get("initContainers", [])
        if name in NO_DATABASE:
            assert not init, name
            continue
        assert [c["name"] for c in init] == ["wait-for-schema"], name
        gate = init[0]
        # The head it waits for is the head of the code the pod runs: the same image.
        assert gate["image"] == main_container(deployment)["image"], name
        path = gate["command"][-1]
        assert gate["command"][:2] == ["python", "-P"], name
        assert path.endswith("/wait_for_schema.py"), name
        mount = next(m for m in gate["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == gates[0]["metadata"]["name"], name
        assert gate["envFrom"] == main_container(deployment)["envFrom"], f"{name}: the same database"


def test_the_gate_holds_until_the_schema_is_at_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks on an empty database and on an older revision; passes at head and on a newer revision
    (a rollback after a newer release migrated); blocks while the database is unreachable."""
    from sqlalchemy import text

    from data import db

    url = f"sqlite:///{tmp_path / 'gate.db'}"
    monkeypatch.setenv("MLSIG_DATABASE_URL", url)
    reset_settings_cache()
    gate = gate_module()
    try:
        ok, why = gate.ready()
        assert not ok
        assert "nothing" in why
        db.upgrade(url, "0001")
        ok, why = gate.ready()
        assert not ok
        assert "waiting for the migration Job" in why
        assert gate.main(["--once"]) == 1
        db.upgrade(url)
        ok, _ = gate.ready()
        assert ok
        assert gate.main(["--once"]) == 0
        with db.get_engine(url).begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
        ok, why = gate.ready()
        assert ok
        assert "newer" in why
        monkeypatch.setenv("MLSIG_DATABASE_URL", "postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
        reset_settings_cache()
        ok, why = gate.ready()
        assert not ok
        assert "not reachable" in why
        assert "secret" not in why
    finally:
        db.dispose_engines()
        reset_settings_cache()


def test_the_gate_runs_as_the_manifests_run_it(tmp_path: Path) -> None:
    """``python -P`` from the ConfigMap's mount: no script directory on sys.path, the project from
    PYTHONPATH (the images set PYTHONPATH=/app)."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = subprocess.run(
        [sys.executable, "-P", str(GATE_SCRIPT), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MLSIG_DATABASE_URL": url},
    )
    assert result.returncode == 1, result.stderr
    assert "waiting for the migration Job" in result.stdout


# ------------------------------------------------------------------------------- secrets, settings


def secret_references(workload: dict[str, Any]) -> set[str]:
    names = set()
    for container in all_containers(workload):
        names |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    names |= {v["secret"]["secretName"] for v in pod_spec(workload)["volumes"] if "secret" in v}
    return names


def test_exchange_keys_reach_the_orders_worker_only(overlay: str) -> None:
    for name, workload in workloads(rendered(overlay)).items():
        refs = {r for r in secret_references(workload) if r.startswith("mlsignals-exchange-keys")}
        assert bool(refs) == (name == deployment_name(Queue.ORDERS)), name
        has_file = "MLSIG_TRADING__SECRETS_FILE" in json.dumps(workload)
        assert has_file == (name == deployment_name(Queue.ORDERS)), name


def test_prod_commits_no_secret_and_documents_every_one_it_needs() -> None:
    docs = rendered("prod")
    assert not of_kind(docs, "Secret"), "no credentials in the repository"
    guide = (ROOT / "docs" / "KUBERNETES.md").read_text()
    needed = set().union(*(secret_references(w) for w in workloads(docs).values()))
    assert needed == {"mlsignals-env", "mlsignals-flower", "mlsignals-mcp-tokens", "mlsignals-exchange-keys"}
    for name in needed:
        assert f"kubectl create secret generic {name}" in guide, name


def test_dev_generates_every_secret_but_the_exchange_keys() -> None:
    docs = rendered("dev")
    generated = {re.sub(r"-[a-z0-9]{10}$", "", n) for n in of_kind(docs, "Secret")}
    needed = {
        re.sub(r"-[a-z0-9]{10}$", "", r) for w in workloads(docs).values() for r in secret_references(w)
    }
    assert needed - generated == {"mlsignals-exchange-keys"}
    orders = of_kind(docs, "Deployment")[deployment_name(Queue.ORDERS)]
    keys = next(
        v
        for v in pod_spec(orders)["volumes"]
        if v.get("secret", {}).get("secretName", "").startswith("mlsignals-exchange")
    )
    assert keys["secret"]["optional"] is True, "paper trading runs without keys"


def test_the_settings_in_the_config_maps_are_valid(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MLSIG_* value of the ConfigMap (and of dev's Secret) loads into Settings (extra=forbid
    rejects a misspelt key)."""
    docs = rendered(overlay)
    values: dict[str, str] = {}
    for cm in of_kind(docs, "ConfigMap").values():
        if cm["metadata"]["name"].startswith("mlsignals-config"):
            values.update(cm["data"])
    assert values["MLSIG_MODEL__REGISTRY_DIR"] == "/data/models"
    env_values = {}
    for w in ours(docs).values():
        for c in all_containers(w):
            env_values.update(
                {k: v for k, v in env_of(c).items() if k.startswith("MLSIG_") and isinstance(v, str)}
            )
    for key in list(os.environ):
        if key.startswith("MLSIG_"):
            monkeypatch.delenv(key)
    for key, value in {**values, **env_values}.items():
        if key.startswith("MLSIG_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLSIG_DATABASE_URL", "postgresql+psycopg://u:p@db:5432/mlsignals")
    reset_settings_cache()
    try:
        settings = Settings()
        assert str(settings.model.registry_dir) == "/data/models"
    finally:
        reset_settings_cache()


def test_the_model_registry_is_shared_and_written_by_two_deployments_only() -> None:
    docs = rendered("prod")
    (pvc,) = of_kind(docs, "PersistentVolumeClaim").values()
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    writers = set()
    for name, workload in ours(docs).items():
        claims = {v["name"] for v in pod_spec(workload)["volumes"] if "persistentVolumeClaim" in v}
        for container in all_containers(workload):
            for mount in container.get("volumeMounts", []):
                if mount["name"] in claims:
                    assert mount["mountPath"] == "/data/models", name
                    if not mount.get("readOnly", False):
                        writers.add(name)
    assert writers == REGISTRY_WRITERS
    deployments = of_kind(docs, "Deployment")
    for queue in (Queue.CONTROL, Queue.FEATURES, Queue.INFERENCE):
        mounts = {m["mountPath"] for m in main_container(deployments[deployment_name(queue)])["volumeMounts"]}
        assert "/data/models" in mounts, queue


def test_flower_requires_basic_auth_from_a_secret() -> None:
    flower = main_container(of_kind(rendered("prod"), "Deployment")["mlsignals-flower"])
    assert env_of(flower)["FLOWER_BASIC_AUTH"] == {
        "secretKeyRef": {"name": "mlsignals-flower", "key": "basic-auth"}
    }


@pytest.mark.parametrize("server", ["data", "signal", "model"])
def test_mcp_servers_read_their_tokens_from_a_secret_file(server: str) -> None:
    deployment = of_kind(rendered("prod"), "Deployment")[f"mlsignals-mcp-{server}"]
    container = main_container(deployment)
    assert container["command"] == [
        "mlsignals", "mcp", "serve", server, "--http", "--host", "0.0.0.0", "--port", "8765",
    ]  # fmt: skip
    tokens_file = env_of(container)["MLSIG_MCP__TOKENS_FILE"]
    mount = next(m for m in container["volumeMounts"] if tokens_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "mlsignals-mcp-tokens"
    assert mount["readOnly"] is True
    assert "MLSIG_MCP__TOKENS" not in env_of(container)
