"""The deployment files (docker-compose.yml, docker/Dockerfile*, .dockerignore), checked without an engine.

Parsed with PyYAML and a small Dockerfile reader: the service set, each worker's command against
``worker_command(queue)``, health checks, ``depends_on`` conditions, loopback-only ports, the GPU
reservation, pinned base images, a non-root user and the layer order, the restart policy (every
long-running service comes back on any exit) and the optional RabbitMQ broker. Also the dependency
lock (requirements*.txt, `make lock`): hashed, in step with pyproject.toml, free of machine paths,
torch from the CPU index, and how each image installs it. When a Compose CLI is
on the PATH (``docker compose`` v2 or the ``docker-compose`` v1 package) it also validates the file
with ``config -q``, which needs no engine; without one that test is skipped.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from core.settings import redis_db_url
from worker.queues import Queue, worker_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_DOCKERFILE = "docker/Dockerfile"
GPU_DOCKERFILE = "docker/Dockerfile.gpu"

INFRA = {"redis", "postgres", "rabbitmq", "migrate", "beat", "flower", "stream"}
QUEUE_SERVICES = {q.value for q in Queue}
ONE_SHOT = {"migrate"}
OK_CONDITIONS = {"service_healthy", "service_completed_successfully"}
# Third-party images: they do not run the project's code.
THIRD_PARTY = {"redis", "postgres", "rabbitmq"}
# Services that run the project's code and so need its settings.
PROJECT_SERVICES = (QUEUE_SERVICES | INFRA) - THIRD_PARTY
# Restart on any exit, status 0 included; the pipeline's own processes with `always`.
ANY_EXIT_RESTART = {"always", "unless-stopped"}
ALWAYS_RESTART = QUEUE_SERVICES | {"beat", "stream"}
RABBITMQ_BROKER_URL = "amqp://guest:guest@rabbitmq:5672//"
# Services that read the model registry (features: the scaler; inference: the model; control).
MODEL_SERVICES = {Queue.CONTROL.value, Queue.FEATURES.value, Queue.INFERENCE.value}


# --------------------------------------------------------------------------------------- readers


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@cache
def compose() -> dict[str, Any]:
    data = yaml.load(COMPOSE_FILE.read_text(), Loader=_StrictLoader)
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset (the defaults a fresh checkout gets)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m[1], text)


def celery_subcommand(command: list[str]) -> str | None:
    if command[:1] != ["celery"]:
        return None
    rest = command[1:]
    if rest[:1] == ["-A"]:
        rest = rest[2:]
    return rest[0] if rest else None


def health_test(service: dict[str, Any]) -> str:
    """The health check's command as one string (what compose hands to Docker)."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    return " ".join(str(part) for part in test[1:])


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuations joined, comments and directives dropped."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buffer):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, rest = buffer.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        buffer = ""
    assert not buffer, f"{path}: dangling line continuation"
    return instructions


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def copy_sources(rest: str) -> list[str]:
    parts = json.loads(rest) if rest.startswith("[") else [p for p in rest.split() if not p.startswith("--")]
    return [str(p) for p in parts[:-1]]


def referenced_dockerfiles() -> dict[str, Path]:
    """Service name -> Dockerfile path, for every service that builds an image."""
    found = {}
    for name, svc in services().items():
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build.get("context", ".")
        found[name] = context / build.get("dockerfile", "Dockerfile")
    return found


def all_dockerfiles() -> list[str]:
    return sorted({str(p.relative_to(ROOT)) for p in referenced_dockerfiles().values()})


# ------------------------------------------------------------------------------------- compose


def test_compose_has_every_required_service() -> None:
    missing = (INFRA | QUEUE_SERVICES) - set(services())
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


@pytest.mark.parametrize("queue", list(Queue), ids=str)
def test_worker_service_command_is_worker_command(queue: Queue) -> None:
    service = services().get(queue.value)
    assert service is not None, f"no service for queue {queue.value}"
    assert argv(service["command"]) == worker_command(queue)


def test_only_queue_services_run_celery_workers() -> None:
    for name, svc in services().items():
        if celery_subcommand(argv(svc.get("command") or [])) == "worker":
            assert name in QUEUE_SERVICES, f"{name} runs a celery worker outside the Queue enum"


@pytest.mark.parametrize("name", sorted(INFRA | QUEUE_SERVICES))
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = services()[name].get("healthcheck")
    assert isinstance(check, dict), f"{name} has no healthcheck"
    assert not check.get("disable"), f"{name} disables its healthcheck"
    test = check.get("test")
    assert isinstance(test, list), f"{name}: healthcheck.test must be a list"
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert len(test) > 1
    assert all(part.strip() for part in test[1:])


@pytest.mark.parametrize("queue", list(Queue), ids=str)
def test_worker_healthcheck_pings_its_own_node(queue: Queue) -> None:
    command = worker_command(queue)
    node = command[command.index("-n") + 1]
    assert node.endswith("@%h")
    expected = node.replace("%h", "$$HOSTNAME")  # compose turns $$ into $ for the shell
    test = services()[queue.value]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    check = shlex.split(test[1])
    assert check[:1] == ["celery"]
    assert "inspect" in check
    assert "ping" in check
    assert check[check.index("-d") + 1] == expected


def test_beat_answers_remote_control_and_is_pinged() -> None:
    beat = services()["beat"]
    command = argv(beat["command"])
    assert command[:4] == ["celery", "-A", "worker", "beat"]
    assert "--enable-remote-control" in command
    node = command[command.index("-n") + 1]
    check = shlex.split(beat["healthcheck"]["test"][1])
    assert check[check.index("-d") + 1] == node.replace("%h", "$$HOSTNAME")
    schedule = command[command.index("--schedule") + 1]
    mounts = [str(v).split(":")[1] for v in beat.get("volumes", [])]
    assert any(schedule.startswith(m.rstrip("/") + "/") for m in mounts) or schedule.startswith("/tmp/")


def test_healthcheck_variables_are_defined() -> None:
    """Every $$VAR a shell health check reads exists in the container's environment."""
    for name, svc in services().items():
        env = set((svc.get("environment") or {}).keys()) | {"HOSTNAME"}
        for var in re.findall(r"\$\$\{?(\w+)", health_test(svc)):
            assert var in env, f"{name}: healthcheck reads ${var}, which the service does not set"


def test_healthcheck_broker_is_the_workers_broker() -> None:
    env = services()[Queue.CONTROL.value]["environment"]
    broker = interpolate(env["MLSIG_CELERY__BROKER_URL"])
    assert broker == redis_db_url(env["MLSIG_REDIS_URL"], 0)


def test_broker_is_switched_by_one_host_variable_and_results_stay_on_redis() -> None:
    """MLSIG_CELERY__BROKER_URL on the host replaces the broker of every project service."""
    for name in PROJECT_SERVICES:
        env = services()[name]["environment"]
        raw = str(env["MLSIG_CELERY__BROKER_URL"])
        assert raw.startswith("${MLSIG_CELERY__BROKER_URL:-"), f"{name}: broker not overridable"
        assert "MLSIG_CELERY__RESULT_BACKEND" not in env, f"{name}: results must stay on Redis"
        assert str(env["MLSIG_REDIS_URL"]).startswith("redis://redis:6379/")
    assert f"MLSIG_CELERY__BROKER_URL={RABBITMQ_BROKER_URL}" in COMPOSE_FILE.read_text()


def test_rabbitmq_is_an_optional_pinned_healthchecked_broker() -> None:
    rabbitmq = services()["rabbitmq"]
    assert rabbitmq["profiles"] == ["rabbitmq"], "RabbitMQ must start only with --profile rabbitmq"
    image = rabbitmq["image"]
    name, _, tag = image.partition(":")
    assert name == "rabbitmq"
    assert re.match(r"^3\.\d+", tag), f"{image} is not pinned to a release"
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    # Its data lives under rabbit@<hostname>: a fixed hostname keeps the volume's queues.
    assert rabbitmq["hostname"] == "rabbitmq"
    targets = {str(v).split(":")[0]: str(v).split(":")[1] for v in rabbitmq["volumes"]}
    assert targets.get("rabbitmq-data") == "/var/lib/rabbitmq"
    assert "rabbitmq-data" in compose()["volumes"]
    env = rabbitmq["environment"]
    assert str(env["RABBITMQ_DEFAULT_PASS"]).startswith("${"), "no hard-coded RabbitMQ password"
    # Nothing may depend on a service of an inactive profile.
    for other, svc in services().items():
        assert "rabbitmq" not in (svc.get("depends_on") or {}), f"{other} depends on the optional rabbitmq"


def test_flower() -> None:
    flower = services()["flower"]
    command = argv(flower["command"])
    assert command[:4] == ["celery", "-A", "worker", "flower"]
    assert "--port=5555" in command
    assert "127.0.0.1:5555:5555" in [interpolate(str(p)) for p in flower["ports"]]
    assert "/healthcheck" in health_test(flower)


def test_stream_is_one_candle_stream_service_checked_through_its_watermark() -> None:
    stream = services()["stream"]
    assert argv(stream["command"]) == ["mlsignals", "data", "stream"]
    assert stream["healthcheck"]["test"] == ["CMD", "mlsignals", "data", "stream-status"]
    assert "deploy" not in stream or stream["deploy"].get("replicas", 1) == 1
    assert stream["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_is_a_one_shot_schema_upgrade() -> None:
    migrate = services()["migrate"]
    assert argv(migrate["command"]) == ["mlsignals", "db", "upgrade"]
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", sorted(INFRA | QUEUE_SERVICES))
def test_depends_on_uses_conditions(name: str) -> None:
    depends = services()[name].get("depends_on", {})
    assert isinstance(depends, dict), f"{name}: depends_on must be a mapping with conditions"
    for target, spec in depends.items():
        assert target in services(), f"{name} depends on unknown {target}"
        assert isinstance(spec, dict), f"{name} -> {target} has no condition"
        condition = spec.get("condition")
        assert condition in OK_CONDITIONS, f"{name} -> {target}: condition {condition!r}"
        if condition == "service_completed_successfully":
            assert target in ONE_SHOT
        else:
            assert "healthcheck" in services()[target]


@pytest.mark.parametrize("name", sorted(QUEUE_SERVICES | {"beat"}))
def test_workers_and_beat_wait_for_broker_and_schema(name: str) -> None:
    depends = services()[name]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    if name != "beat":
        assert depends["postgres"]["condition"] == "service_healthy"


def _published(port: Any) -> str | None:
    """The host side of a port entry as 'IP:PORT', or None for a bare container port."""
    if isinstance(port, dict):
        if "published" not in port:
            return None
        return f"{port.get('host_ip', '0.0.0.0')}:{port['published']}"
    text = interpolate(str(port))
    return text if ":" in text else None


@pytest.mark.parametrize("name", sorted(INFRA | QUEUE_SERVICES))
def test_published_ports_bind_loopback_only(name: str) -> None:
    svc = services()[name]
    assert svc.get("network_mode") != "host", f"{name}: host networking bypasses the port bindings"
    for port in svc.get("ports", []):
        published = _published(port)
        assert published is not None, f"{name}: {port!r} publishes on every interface"
        assert published.startswith("127.0.0.1:"), f"{name}: {port!r} is not bound to 127.0.0.1"


def test_long_running_services_restart_on_any_exit() -> None:
    """Workers never die silently: every service but the one-shot migration comes back after any
    exit, status 0 included (`on-failure` would leave a worker that exited cleanly down)."""
    for name, svc in services().items():
        if name in ONE_SHOT:
            continue
        assert svc.get("restart") in ANY_EXIT_RESTART, f"{name}: restart {svc.get('restart')!r}"
    for name in ALWAYS_RESTART:
        assert services()[name].get("restart") == "always", f"{name} must restart always"


def test_inference_reserves_a_gpu_and_uses_the_gpu_image() -> None:
    inference = services()[Queue.INFERENCE.value]
    devices = inference["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count", 0) >= 1
        for d in devices
    )
    assert inference["build"]["dockerfile"] == GPU_DOCKERFILE
    for name, path in referenced_dockerfiles().items():
        if name != Queue.INFERENCE.value:
            assert path == ROOT / CPU_DOCKERFILE, f"{name} should use the CPU image"


def test_project_services_share_settings_and_model_volume() -> None:
    for name in PROJECT_SERVICES:
        env = services()[name].get("environment") or {}
        assert "@postgres:5432/" in env.get("MLSIG_DATABASE_URL", ""), name
        assert env.get("MLSIG_REDIS_URL", "").startswith("redis://redis:6379/"), name
    for name in MODEL_SERVICES:
        svc = services()[name]
        registry = svc["environment"]["MLSIG_MODEL__REGISTRY_DIR"]
        targets = {str(v).split(":")[0]: str(v).split(":")[1] for v in svc.get("volumes", [])}
        assert targets.get("models") == registry, f"{name} must mount the models volume at {registry}"
    assert "models" in compose()["volumes"]


def test_no_hard_coded_password() -> None:
    postgres = services()["postgres"]["environment"]
    assert str(postgres["POSTGRES_PASSWORD"]).startswith("${POSTGRES_PASSWORD")
    url = services()["migrate"]["environment"]["MLSIG_DATABASE_URL"]
    assert ":${POSTGRES_PASSWORD" in url


def test_compose_builds_only_existing_dockerfiles() -> None:
    for name, path in referenced_dockerfiles().items():
        assert path.is_file(), f"{name} builds from missing {path}"
    assert set(all_dockerfiles()) == {CPU_DOCKERFILE, GPU_DOCKERFILE}


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("profiles", [[], ["--profile", "rabbitmq"]], ids=["default", "rabbitmq"])
def test_compose_cli_validates_the_file(profiles: list[str]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI (docker compose / docker-compose) on PATH")
    result = subprocess.run(
        [*cli, *profiles, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("relpath", [CPU_DOCKERFILE, GPU_DOCKERFILE])
def test_dockerfile_base_images_are_pinned(relpath: str) -> None:
    instructions = dockerfile(ROOT / relpath)
    args = arg_defaults(instructions)
    stages: set[str] = set()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms, f"{relpath} has no FROM"
    for rest in froms:
        tokens = [t for t in rest.split() if not t.startswith("--")]
        image = expand(tokens[0], args)
        if len(tokens) >= 3 and tokens[1].lower() == "as":
            stages.add(tokens[2])
        if image in stages:
            continue
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name, f"{relpath}: {image} has no tag"
        assert "/" not in tag, f"{relpath}: {image} has no tag"
        assert tag != "latest", f"{relpath}: {image} uses :latest"
        assert re.search(r"\d", tag), f"{relpath}: {image} tag names no version"


@pytest.mark.parametrize("relpath", [CPU_DOCKERFILE, GPU_DOCKERFILE])
def test_dockerfile_runs_as_non_root(relpath: str) -> None:
    users = [rest for keyword, rest in dockerfile(ROOT / relpath) if keyword == "USER"]
    assert users, f"{relpath} sets no USER"
    user = users[-1].split(":")[0].strip()
    assert user not in {"root", "0", ""}, f"{relpath} runs as {user!r}"


@pytest.mark.parametrize("relpath", [CPU_DOCKERFILE, GPU_DOCKERFILE])
def test_dockerfile_installs_pins_before_copying_the_project(relpath: str) -> None:
    instructions = dockerfile(ROOT / relpath)
    copies = [(i, copy_sources(rest)) for i, (k, rest) in enumerate(instructions) if k in {"COPY", "ADD"}]
    req = next(i for i, src in copies if "requirements.txt" in src)
    project = next(i for i, src in copies if "." in src or "pyproject.toml" in src)
    assert req < project, f"{relpath}: COPY requirements.txt must come before the project"
    pip_r = [
        i
        for i, (k, rest) in enumerate(instructions)
        if k == "RUN" and "pip install" in rest and "requirements.txt" in rest
    ]
    assert pip_r, f"{relpath} never installs requirements.txt"
    assert req < pip_r[0] < project
    installs_project = [
        i for i, (k, rest) in enumerate(instructions) if k == "RUN" and "pip install --no-deps ." in rest
    ]
    assert installs_project, f"{relpath} never installs the project"
    assert installs_project[0] > project
    assert ("WORKDIR", "/app") in instructions
    env = " ".join(rest for k, rest in instructions if k == "ENV")
    assert "PYTHONUNBUFFERED=1" in env


# ------------------------------------------------------------------------------------------ the lock

LOCKS = ("requirements.txt", "requirements-dev.txt")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\;]+)", re.MULTILINE)


def lock_entries(relpath: str) -> dict[str, tuple[str, str]]:
    """Canonical name -> (version, the entry's text: pin line, hashes, `# via` lines)."""
    text = (ROOT / relpath).read_text()
    starts = list(PIN.finditer(text))
    entries: dict[str, tuple[str, str]] = {}
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        body = text[match.start() : following.start() if following else len(text)]
        entries[canonicalize_name(match[1])] = (match[2], body)
    return entries


def _torch_pin() -> str:
    return lock_entries("requirements.txt")["torch"][0]


@pytest.mark.parametrize("relpath", LOCKS)
def test_lock_pins_every_package_with_hashes_for_the_target(relpath: str) -> None:
    text = (ROOT / relpath).read_text()
    header = text[: text.index("\n\n")]
    assert "CPython 3.11 on Linux x86_64" in header
    assert "make lock" in header
    entries = lock_entries(relpath)
    assert len(entries) > 50
    for name, (_, body) in entries.items():
        assert "--hash=sha256:" in body, f"{relpath}: {name} has no hash"
    # No index option: pip would ask an extra index for every package. torch, the one package of
    # the CPU index, is installed first from requirements-torch.txt.
    options = [line for line in text.splitlines() if line.startswith("-")]
    assert options == [], f"{relpath}: options {options}"
    for machine_specific in ("file://", "/opt/", "/home/", "/tmp/", "--find-links", "--trusted-host"):
        assert machine_specific not in text, f"{relpath} names {machine_specific!r}"


def test_dev_lock_keeps_the_runtime_pins() -> None:
    runtime = {name: version for name, (version, _) in lock_entries("requirements.txt").items()}
    dev = {name: version for name, (version, _) in lock_entries("requirements-dev.txt").items()}
    assert {name: dev.get(name) for name in runtime} == runtime
    assert {"pip-tools", "setuptools", "pytest"} <= set(dev)


@pytest.mark.parametrize(("relpath", "extra"), [("requirements.txt", None), ("requirements-dev.txt", "dev")])
def test_lock_satisfies_pyproject(relpath: str, extra: str | None) -> None:
    """The lock is not stale: every requirement of pyproject.toml is pinned to a version it allows."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    if extra is not None:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    entries = lock_entries(relpath)
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in entries, f"{relpath} does not pin {req}: run `make lock`"
        version = entries[name][0]
        assert req.specifier.contains(version, prereleases=True), f"{relpath}: {name}=={version} vs {req}"
    # A package only the dev extra needs stays out of the runtime lock.
    if extra is None:
        dev_only = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
        assert not dev_only & {"pytest", "ta", "backtesting", "pip-tools"} & set(entries)


def test_lock_takes_torch_from_the_cpu_index() -> None:
    version, body = lock_entries("requirements.txt")["torch"]
    assert Version(version).local == "cpu"
    assert body.count("--hash=sha256:") >= 1
    torch_lock = (ROOT / "requirements-torch.txt").read_text()
    options = [line for line in torch_lock.splitlines() if line.startswith("-")]
    assert options == [f"--index-url {CPU_INDEX}"]
    entries = lock_entries("requirements-torch.txt")
    assert list(entries) == ["torch"], "requirements-torch.txt holds torch alone"
    pin, hashes = entries["torch"]
    assert pin == version
    assert set(re.findall(r"--hash=sha256:\w+", hashes)) == set(re.findall(r"--hash=sha256:\w+", body))


def test_setup_installs_torch_alone_first_then_the_lock() -> None:
    recipe = (ROOT / "Makefile").read_text()
    torch_step = recipe.index("--require-hashes --no-deps -r requirements-torch.txt")
    lock_step = recipe.index("--require-hashes -r requirements-dev.txt")
    assert torch_step < lock_step


# ---------------------------------------------------------------------------------- images and lock


def test_cpu_image_installs_the_lock_in_hash_checking_mode() -> None:
    instructions = dockerfile(ROOT / CPU_DOCKERFILE)
    runs = expand(" ".join(r for k, r in instructions if k == "RUN"), arg_defaults(instructions))
    torch_step = runs.index("pip install --require-hashes --no-deps -r /tmp/requirements-torch.txt")
    assert torch_step < runs.index("pip install --require-hashes -r /tmp/requirements.txt")
    # torch comes from the CPU index that requirements-torch.txt names, not from one the image adds.
    assert "--index-url" not in runs
    assert "cu12" not in runs


def test_gpu_image_takes_the_pinned_torch_from_a_cuda_index() -> None:
    instructions = dockerfile(ROOT / GPU_DOCKERFILE)
    runs = expand(" ".join(r for k, r in instructions if k == "RUN"), arg_defaults(instructions))
    runs = runs.replace('"', "")
    match = re.search(r"--index-url https://download\.pytorch\.org/whl/(cu12\d+) torch==(\S+)", runs)
    assert match, "the GPU image installs no torch from a CUDA index"
    cuda = Version(match[2])
    assert cuda.public == Version(_torch_pin()).public, "the GPU image's torch is not the lock's version"
    assert cuda.local == match[1], f"torch {cuda} from the {match[1]} index"
    assert "--require-hashes -r /tmp/requirements-no-torch.txt" in runs
    base = next(r for k, r in instructions if k == "FROM")
    assert base.startswith("nvidia/cuda:") or base.startswith("pytorch/pytorch:")


def test_gpu_image_filter_drops_exactly_the_torch_entry() -> None:
    """Run the GPU image's sed over the real lock: every other entry stays whole, hashes included."""
    runs = " ".join(r for k, r in dockerfile(ROOT / GPU_DOCKERFILE) if k == "RUN")
    match = re.search(r"sed '([^']+)' /tmp/requirements\.txt", runs)
    assert match, "the GPU image does not filter the lock with sed"
    lock = (ROOT / "requirements.txt").read_text()
    result = subprocess.run(["sed", match[1]], input=lock, capture_output=True, text=True, check=True)
    entries = lock_entries("requirements.txt")
    torch_entry = entries.pop("torch")[1]
    assert not re.search(r"^torch==", result.stdout, re.MULTILINE)
    assert result.stdout == lock.replace(torch_entry, "")
    for _, body in entries.values():
        assert body in result.stdout


def test_gpu_image_default_command_is_the_inference_worker() -> None:
    cmd = [rest for keyword, rest in dockerfile(ROOT / GPU_DOCKERFILE) if keyword == "CMD"][-1]
    assert json.loads(cmd) == worker_command(Queue.INFERENCE)


def test_dockerignore_keeps_state_and_tests_out_but_the_build_inputs_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("!")
    ]

    def ignored(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p.lstrip("/")) for p in patterns)

    for name in (".git", ".venv", "var", "tests", ".mypy_cache", ".pytest_cache", ".ruff_cache"):
        assert ignored(name), f".dockerignore lets {name} into the image"
    needed = ["requirements.txt", "requirements-torch.txt", "pyproject.toml", "README.md", "alembic.ini"]
    needed += ["celeryconfig.py", "core", "data", "ml", "cli", "migrations", "worker", "tasks", "trading"]
    needed += ["pipeline"]
    for name in needed:
        assert not ignored(name), f".dockerignore drops {name}, which the image needs"


@pytest.mark.parametrize("name", ["data", "signal", "model"])
def test_mcp_servers_serve_http_with_tokens_on_loopback_read_only_by_default(name: str) -> None:
    svc = services()[f"mcp-{name}"]
    command = argv(svc["command"])
    assert command[:4] == ["mlsignals", "mcp", "serve", name]
    assert "--http" in command
    port = command[command.index("--port") + 1]
    env = svc["environment"]
    assert env["MLSIG_MCP__ALLOW_WRITE"] == "${MLSIG_MCP__ALLOW_WRITE:-false}"
    assert env["MLSIG_MCP__TOKENS_FILE"] == "/run/secrets/mcp_tokens"
    assert "MLSIG_MCP__TOKENS" not in env  # tokens never in the compose file
    assert svc["secrets"] == ["mcp_tokens"]
    assert "mcp_tokens" in compose()["secrets"]
    [published] = svc["ports"]
    assert published.startswith("127.0.0.1:")
    assert published.endswith(f":{port}")
    assert f"127.0.0.1:{port}/healthz" in " ".join(svc["healthcheck"]["test"])
    models = [str(v) for v in svc["volumes"] if str(v).startswith("models:")]
    # Only promote/rollback (ml-model) move the registry's aliases.
    assert models == (["models:/data/models"] if name == "model" else ["models:/data/models:ro"])
