"""docs/OPERATIONS.md (the runbook) against what it refers to, so that neither drifts:

* every alert of deploy/prometheus/rules/*.yml has its section (``### <alertname>``) with what it
  means, what to check and the fix, and there is no section for an alert that no longer exists;
* every ``mlsignals …`` command it quotes (in code spans and code blocks) is a command of the typer
  app (``cli.main.app``), with options that command has;
* the Kubernetes Deployments, Compose services and systemd units it names exist in deploy/k8s,
  docker-compose.yml and deploy/systemd;
* every Grafana panel it quotes is a panel of the dashboard it names.

The runbook's procedures themselves (model rollback, kill switch) run in
tests/integration/test_runbook.py.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "OPERATIONS.md"
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
SECTION_PARTS = ("**Means.**", "**Check.**", "**Fix.**")


@cache
def runbook() -> str:
    return RUNBOOK.read_text()


def alert_names() -> list[str]:
    names: list[str] = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names += [str(rule["alert"]) for rule in group["rules"] if "alert" in rule]
    return sorted(set(names))


def alert_sections() -> dict[str, str]:
    """``### Name`` headings under ``## Alerts`` -> their text."""
    alerts = runbook().split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### (\S+)\n", alerts, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_there_are_alert_rules() -> None:
    assert len(alert_names()) >= 20


def test_every_alert_has_a_runbook_section() -> None:
    sections = alert_sections()
    assert sorted(sections) == alert_names()  # none missing, none stale


@pytest.mark.parametrize("name", alert_names())
def test_each_alert_section_says_what_it_means_what_to_check_and_the_fix(name: str) -> None:
    text = alert_sections()[name]
    positions = [text.find(part) for part in SECTION_PARTS]
    assert -1 not in positions, f"{name}: needs {SECTION_PARTS}"
    assert positions == sorted(positions)


# --- mlsignals commands ----------------------------------------------------------------------------


def cli_tree() -> dict[str, Any]:
    """The typer app as nested dicts: group -> command -> set of its options."""

    def walk(command: Any) -> dict[str, Any] | set[str]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            return {name: walk(sub) for name, sub in subcommands.items()}
        options: set[str] = {"--help"}
        for param in command.params:
            if param.param_type_name == "option":
                options.update(param.opts)
                options.update(param.secondary_opts)
        return options

    tree = walk(get_command(app))
    assert isinstance(tree, dict)
    return tree


def code_texts(markdown: str) -> list[str]:
    """The lines of fenced code blocks (a line continued by a backslash joined to the next) and the
    inline code spans."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.M | re.S)
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", markdown, flags=re.M | re.S)
    joined = re.sub(r"\s*\n\s*", " ", prose)  # a code span may wrap
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return lines + re.findall(r"`([^`]+)`", joined)


def mlsignals_invocations(markdown: str) -> list[list[str]]:
    """``mlsignals`` (alone or as a path's last part) followed by its arguments, up to a shell
    separator or comment; ``mlsignals …`` (a placeholder for any command) and the user of
    ``sudo -u mlsignals`` are left out."""
    found = []
    for text in code_texts(markdown):
        for match in re.finditer(r"(?:^|(?<=[\s/]))(?<!-u )(?<!-g )mlsignals(?= )", text):
            rest = text[match.end() :]
            rest = re.split(r"\s#|\s\|\s|;|&&|\|\|", rest, maxsplit=1)[0]
            try:
                words = shlex.split(rest)
            except ValueError:  # inside a quoted `sh -c '…'`: its closing quote is in `rest`
                words = rest.replace("'", " ").replace('"', " ").split()
            if not words or words[0] in ("…", "..."):
                continue
            found.append(words)
    return found


def test_the_runbook_quotes_the_commands_it_needs() -> None:
    quoted = {" ".join(words[:2]) for words in mlsignals_invocations(runbook())}
    assert {
        "model rollback",
        "model list",
        "model promote",
        "trading halt",
        "trading resume",
        "trading status",
        "db upgrade",
        "db downgrade",
        "db current",
    } <= quoted


def test_every_mlsignals_command_in_the_runbook_exists() -> None:
    tree = cli_tree()
    invocations = mlsignals_invocations(runbook())
    assert len(invocations) > 40
    for words in invocations:
        node: Any = tree
        path: list[str] = []
        while isinstance(node, dict):
            assert words, f"`mlsignals {' '.join(path)}` is a group, not a command"
            name = words.pop(0)
            assert name in node, f"`mlsignals {' '.join([*path, name])}`: no such command"
            path.append(name)
            node = node[name]
        for word in words:
            if word.startswith("-"):
                option = word.split("=", 1)[0]
                assert option in node, f"`mlsignals {' '.join(path)}` has no option {option}"


def test_the_command_check_finds_a_wrong_command() -> None:
    words = mlsignals_invocations(
        "run `mlsignals model rolback` and\n```bash\nmlsignals trading halt --force\n```\n"
    )
    assert words == [["trading", "halt", "--force"], ["model", "rolback"]]
    tree = cli_tree()
    assert "rolback" not in tree["model"]
    assert "--force" not in tree["trading"]["halt"]


# --- names of the deployments ----------------------------------------------------------------------


def k8s_objects(kind: str) -> set[str]:
    """Names of the objects of ``kind`` in deploy/k8s/base (what every overlay deploys)."""
    names = set()
    for path in (ROOT / "deploy" / "k8s" / "base").rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                names.add(str(doc["metadata"]["name"]))
    return names


def test_the_kubernetes_names_exist() -> None:
    """The runbook lists every Deployment of the base, and each Deployment, Job and namespace it
    names exists there."""
    base = ROOT / "deploy" / "k8s" / "base"
    assert (base / "kustomization.yaml").is_file(), "deploy/k8s/base is missing"
    deployments = k8s_objects("Deployment")
    text = runbook()
    sentence = re.sub(r"\s+", " ", text).split("The Deployments of `deploy/k8s/base` are ", 1)[1]
    listed = set(re.findall(r"`(mlsignals-[a-z0-9-]+)`", sentence.split(";", 1)[0]))
    assert listed == deployments
    # deploy/<name> and deployment/<name> in commands (not the paths deploy/k8s/…, nor placeholders)
    used = set(re.findall(r"(?<=\s)deploy(?:ment)?/([a-z][a-z0-9-]*)(?![\w/<-])", text))
    assert "mlsignals-worker-control" in used
    assert used <= deployments
    jobs = set(re.findall(r"\bjob/([a-z][a-z0-9-]*)", text))
    assert jobs
    assert jobs <= k8s_objects("Job")
    namespace = yaml.safe_load((base / "kustomization.yaml").read_text())["namespace"]
    assert f"--namespace={namespace}`" in text


def compose_services() -> set[str]:
    return set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def test_the_compose_services_named_exist() -> None:
    services = compose_services()
    for text in code_texts(runbook()):
        for match in re.finditer(r"docker compose ([^|;#`]*)", text):
            words = match[1].replace("\\", " ").split()
            if not words:
                continue
            verb, args = words[0], words[1:]
            names = []
            if verb in ("exec", "run"):
                names = [next(w for w in args if not w.startswith("-"))]
            elif verb in ("ps", "logs", "restart", "up", "images"):
                names = [w for w in args if re.fullmatch(r"[a-z][a-z0-9-]*", w)]
            for name in names:
                assert name in services or name == "<name>", f"`docker compose {verb}`: no service {name}"


def test_the_systemd_units_named_exist() -> None:
    units = {p.name for p in (ROOT / "deploy" / "systemd").iterdir()}
    named = set(re.findall(r"\b(mlsignals(?:-[a-z<>]+)*\.(?:service|target))", runbook()))
    named |= {f"{u}.service" for u in re.findall(r"-u (mlsignals-[a-z-]+)(?![a-z<-])", runbook())}
    named |= {f"{u}.service" for u in re.findall(r"restart (mlsignals-[a-z-]+)(?![a-z<-])", runbook())}
    assert "mlsignals.target" in named
    for name in named:
        if "<queue>" not in name:
            assert name in units, name
    assert "mlsignals-worker-<queue>" in runbook()
    assert any(u.startswith("mlsignals-worker-") for u in units)


# --- dashboards ------------------------------------------------------------------------------------


def dashboards() -> dict[str, set[str]]:
    """Dashboard name (without the ``mlsignals / `` prefix) -> its panel titles."""
    found = {}
    for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        titles: set[str] = set()
        stack = list(board["panels"])
        while stack:
            panel = stack.pop()
            titles.add(str(panel.get("title", "")))
            stack += panel.get("panels", [])
        found[board["title"].removeprefix("mlsignals / ")] = titles
    return found


def test_every_dashboard_panel_quoted_exists() -> None:
    boards = dashboards()
    text = re.sub(r"\s+", " ", runbook())
    quoted = [(m[1], m[2]) for m in re.finditer(r"\*([^*]+)\* dashboard's \"([^\"]+)\"", text)]
    quoted += [(m[2], m[1]) for m in re.finditer(r"\"([^\"]+)\" on the \*([^*]+)\* dashboard", text)]
    same = re.findall(
        r"\*([^*]+)\* dashboard's \"[^\"]+\" \([^)]*\) and \"([^\"]+)\" on the same dashboard", text
    )
    quoted += same
    assert len(quoted) >= 8
    for board, panel in quoted:
        assert board in boards, f"no dashboard {board!r}"
        assert panel in boards[board], f"no panel {panel!r} on the {board} dashboard"
