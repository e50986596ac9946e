"""Real Prometheus and AlertManager processes for the monitoring tests, and a fake Telegram Bot API.

The binaries are the Debian packages (``prometheus`` 2.42, ``prometheus-alertmanager`` 0.25, with
``promtool`` and ``amtool``) that ``scripts/ensure-services.sh`` installs. When one is missing the
helpers raise :class:`MonitoringToolMissingError`: the tests fail (they do not skip) and say how to
install it.

Everything listens on 127.0.0.1 on a port picked free at start, keeps its state in a directory the
caller gives (a pytest ``tmp_path``) and is stopped when its context manager exits::

    with run_prometheus(config_file, tmp_path / "prom") as prom:
        prom.query('up{job="mlsignals"}')

    with FakeTelegram(token="123:abc") as telegram:
        config = render_alertmanager_config(template, -100123, bot_token="123:abc",
                                            api_url=telegram.url, telegram_template=...)
        with run_alertmanager(write(config), tmp_path / "am") as am:
            am.post_alerts([...])
            telegram.wait_for(lambda m: "MLSignalsKillSwitchEngaged" in m["text"], timeout=30)
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_FILE = PROMETHEUS_DIR / "rules" / "mlsignals.rules.yml"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
ALERTMANAGER_DIR = ROOT / "deploy" / "alertmanager"
ALERTMANAGER_TEMPLATE = ALERTMANAGER_DIR / "alertmanager.yml.tmpl"
TELEGRAM_TEMPLATE = ALERTMANAGER_DIR / "telegram.tmpl"

ENSURE_SERVICES_HINT = (
    "run `sudo scripts/ensure-services.sh` (it installs Debian's prometheus and prometheus-alertmanager)"
)

# Names each tool has been installed under: Debian's, then upstream's tarball.
_BINARY_NAMES: dict[str, tuple[str, ...]] = {
    "promtool": ("promtool",),
    "amtool": ("amtool",),
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
}


class MonitoringToolMissingError(RuntimeError):
    """A Prometheus/AlertManager binary is not installed."""


class ProcessFailedError(RuntimeError):
    """A daemon exited or did not become ready; the message carries the end of its log."""


# --- binaries and ports ---------------------------------------------------------------------------


def find_binary(tool: str) -> str:
    """Path of ``tool`` (promtool, amtool, prometheus or alertmanager); raises when not installed."""
    for name in _BINARY_NAMES[tool]:
        path = shutil.which(name)
        if path is not None:
            return path
    names = " or ".join(_BINARY_NAMES[tool])
    raise MonitoringToolMissingError(f"{names} is not installed: {ENSURE_SERVICES_HINT}")


def promtool() -> str:
    return find_binary("promtool")


def amtool() -> str:
    return find_binary("amtool")


def run_tool(tool: str, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run promtool or amtool to completion; stdout and stderr together in ``.stdout``."""
    return subprocess.run(
        [find_binary(tool), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick; a race with others is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``check`` until it returns something other than None (or False), at most ``timeout`` s.

    For state another process reaches asynchronously (targets discovered, an alert firing) and
    that only an HTTP API shows: there is no event to wait on.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


# --- HTTP -------------------------------------------------------------------------------------------


def http_json(method: str, url: str, body: Any = None, *, timeout: float = 5) -> Any:
    """Send ``body`` as JSON (when given) and decode the JSON answer; raises on an HTTP error."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def _answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --- daemons ----------------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A started Prometheus or AlertManager: its process, address and log file."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        """Poll ``/-/ready`` until it answers 200; fail early when the process has exited."""
        deadline = time.monotonic() + timeout
        while not _answers_ok(f"{self.url}/-/ready"):
            if self.process.poll() is not None:
                raise ProcessFailedError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ProcessFailedError(f"{self.name} not ready within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


@contextmanager
def _daemon(
    name: str, command: Sequence[str], port: int, workdir: Path, ready_timeout: float
) -> Iterator[Daemon]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            list(command), cwd=workdir, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    daemon = Daemon(name, process, port, log)
    try:
        daemon.wait_ready(ready_timeout)
        yield daemon
    finally:
        daemon.stop()


@dataclass
class RunningPrometheus:
    daemon: Daemon

    @property
    def url(self) -> str:
        return self.daemon.url

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a GET on the HTTP API (``path`` like ``/api/v1/alerts``); raises unless success."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        answer = http_json("GET", f"{self.url}{path}{query}")
        if answer.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} answered {answer}")
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query: the result list (``metric`` and ``value`` per series)."""
        data = self.api("/api/v1/query", query=promql)
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) of the rules Prometheus evaluates."""
        return list(self.api("/api/v1/alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health (``up``/``down``/``unknown``) and last error."""
        return list(self.api("/api/v1/targets")["activeTargets"])

    def metric_names(self) -> list[str]:
        """Every series name Prometheus holds."""
        return list(self.api("/api/v1/label/__name__/values"))

    def rules(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/rules")["groups"])


@contextmanager
def run_prometheus(
    config_file: Path, workdir: Path, *, extra_args: Sequence[str] = (), ready_timeout: float = 30
) -> Iterator[RunningPrometheus]:
    """A real Prometheus on a free loopback port, its TSDB in ``workdir``; stopped on exit.

    Relative paths in the config (rule_files) resolve against the config file's directory.
    """
    port = free_port()
    command = [
        find_binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *extra_args,
    ]
    with _daemon("prometheus", command, port, workdir, ready_timeout) as daemon:
        yield RunningPrometheus(daemon)


@dataclass
class RunningAlertmanager:
    daemon: Daemon

    @property
    def url(self) -> str:
        return self.daemon.url

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """POST /api/v2/alerts: each a dict with ``labels``, ``annotations`` (and optional
        ``startsAt``/``endsAt`` in RFC 3339), as Prometheus sends them."""
        http_json("POST", f"{self.url}/api/v2/alerts", list(alerts))

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: each with ``labels`` and ``status`` (``state``: active, suppressed;
        ``inhibitedBy``, ``silencedBy``)."""
        return list(http_json("GET", f"{self.url}/api/v2/alerts"))

    def status(self) -> dict[str, Any]:
        return dict(http_json("GET", f"{self.url}/api/v2/status"))


@contextmanager
def run_alertmanager(
    config_file: Path, workdir: Path, *, extra_args: Sequence[str] = (), ready_timeout: float = 30
) -> Iterator[RunningAlertmanager]:
    """A real AlertManager on a free loopback port, its state in ``workdir``; stopped on exit.

    Clustering off (``--cluster.listen-address=``): otherwise it binds 0.0.0.0:9094.
    """
    port = free_port()
    command = [
        find_binary("alertmanager"),
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        *extra_args,
    ]
    with _daemon("alertmanager", command, port, workdir, ready_timeout) as daemon:
        yield RunningAlertmanager(daemon)


# --- the AlertManager configuration -----------------------------------------------------------------

CHAT_ID_PLACEHOLDER = "__TELEGRAM_CHAT_ID__"
TELEGRAM_TEMPLATE_IN_CONTAINER = "/etc/alertmanager/telegram.tmpl"
_BOT_TOKEN_FILE_LINE = re.compile(r"^(?P<indent>[ \t]*)bot_token_file:[^\n]*$", re.MULTILINE)
_TIMING_KEYS = frozenset({"group_wait", "group_interval", "repeat_interval"})


def render_alertmanager_config(
    template_text: str,
    chat_id: int,
    *,
    bot_token: str | None = None,
    api_url: str | None = None,
    telegram_template: Path | None = None,
    timings: Mapping[str, str] | None = None,
) -> str:
    """deploy/alertmanager/alertmanager.yml.tmpl made loadable by AlertManager 0.25.

    The chat id replaces ``__TELEGRAM_CHAT_ID__`` (as the container's sed does). With ``bot_token``
    every ``bot_token_file: ...`` line becomes ``bot_token: <token>`` (0.25 knows no
    bot_token_file); ``api_url`` adds ``api_url: <url>`` after it (a fake Telegram server).
    ``telegram_template`` replaces the in-container path of telegram.tmpl; ``timings`` overrides
    group_wait / group_interval / repeat_interval everywhere (a test needs seconds, not minutes).
    """
    if isinstance(chat_id, bool) or not isinstance(chat_id, int):
        raise TypeError(f"chat_id must be an int (Telegram wants an unquoted integer), not {chat_id!r}")
    if CHAT_ID_PLACEHOLDER not in template_text:
        raise ValueError(f"the template has no {CHAT_ID_PLACEHOLDER} placeholder")
    text = template_text.replace(CHAT_ID_PLACEHOLDER, str(chat_id))
    if bot_token is not None or api_url is not None:
        text = _replace_token_lines(text, bot_token, api_url)
    if telegram_template is not None:
        if TELEGRAM_TEMPLATE_IN_CONTAINER not in text:
            raise ValueError(f"the template does not name {TELEGRAM_TEMPLATE_IN_CONTAINER}")
        text = text.replace(TELEGRAM_TEMPLATE_IN_CONTAINER, str(telegram_template))
    for key, value in (timings or {}).items():
        text = _override_timing(text, key, value)
    return text


def _replace_token_lines(text: str, bot_token: str | None, api_url: str | None) -> str:
    def replace(match: re.Match[str]) -> str:
        indent = match.group("indent")
        # JSON strings are YAML double-quoted scalars: any token or URL stays one safe scalar.
        lines = [f"{indent}bot_token: {json.dumps(bot_token)}" if bot_token is not None else match.group(0)]
        if api_url is not None:
            lines.append(f"{indent}api_url: {json.dumps(api_url)}")
        return "\n".join(lines)

    text, count = _BOT_TOKEN_FILE_LINE.subn(replace, text)
    if count == 0:
        raise ValueError("the template has no `bot_token_file:` line to replace")
    return text


def _override_timing(text: str, key: str, value: str) -> str:
    if key not in _TIMING_KEYS:
        raise ValueError(f"unknown timing {key!r}; known: {sorted(_TIMING_KEYS)}")
    if not re.fullmatch(r"[0-9]+(ms|s|m|h|d|w|y)", value):
        raise ValueError(f"{key}: {value!r} is not a Prometheus duration")
    pattern = re.compile(rf"^(?P<indent>[ \t]*){key}:[^\n]*$", re.MULTILINE)
    text, count = pattern.subn(lambda m: f"{m.group('indent')}{key}: {value}", text)
    if count == 0:
        raise ValueError(f"the template has no `{key}:` line")
    return text


# --- a fake Telegram Bot API ------------------------------------------------------------------------

_BOT_METHOD_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")


class FakeTelegram:
    """Answers like Telegram's Bot API on 127.0.0.1 (``sendMessage``, ``getMe``) and records messages.

    ``url`` is the ``api_url`` to give AlertManager. ``messages`` holds every accepted sendMessage
    as a dict (``chat_id`` as an int, ``text``, ``parse_mode``, ...); ``received`` is set on each one.
    Like Telegram it refuses an empty text (400) and, when ``token`` is given, another token (401);
    those requests land in ``refused`` instead.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.received = threading.Event()
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-telegram", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeTelegram:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool] = lambda _m: True, *, timeout: float = 30
    ) -> dict[str, Any]:
        """The first recorded message that satisfies ``predicate``, waiting up to ``timeout`` s."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((m for m in self.messages if predicate(m)), None), timeout=timeout
            )
        if found is None:
            raise TimeoutError(
                f"no matching Telegram message within {timeout} s; "
                f"got {self.messages!r}, refused {self.refused!r}"
            )
        return found

    # The handler runs in the server's threads.
    def _record(self, method: str, token: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.token is not None and token != self.token:
            return self._refuse(fields, 401, "Unauthorized")
        if method == "getMe":
            return 200, {
                "ok": True,
                "result": {"id": 1, "is_bot": True, "first_name": "mlsignals", "username": "mlsignals_bot"},
            }
        if method != "sendMessage":
            return self._refuse(fields, 404, "Not Found")
        text = str(fields.get("text") or "")
        if not text.strip():
            return self._refuse(fields, 400, "Bad Request: message text is empty")
        message = {**fields, "chat_id": _as_chat_id(fields.get("chat_id")), "text": text}
        with self._changed:
            self.messages.append(message)
            message_id = len(self.messages)
            self._changed.notify_all()
        self.received.set()
        result = {
            "message_id": message_id,
            "chat": {"id": message["chat_id"]},
            "date": int(time.time()),
            "text": text,
        }
        return 200, {"ok": True, "result": result}

    def _refuse(self, fields: dict[str, Any], code: int, description: str) -> tuple[int, dict[str, Any]]:
        with self._changed:
            self.refused.append({**fields, "error_code": code})
            self._changed.notify_all()
        return code, {"ok": False, "error_code": code, "description": description}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._answer(self._fields())

            def do_GET(self) -> None:
                self._answer(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)))

            def _fields(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    decoded = json.loads(raw or b"{}")
                    return dict(decoded) if isinstance(decoded, dict) else {}
                return dict(urllib.parse.parse_qsl(raw.decode()))

            def _answer(self, fields: dict[str, Any]) -> None:
                match = _BOT_METHOD_PATH.match(urllib.parse.urlsplit(self.path).path)
                if match is None:
                    code, body = 404, {"ok": False, "error_code": 404, "description": "Not Found"}
                else:
                    code, body = fake._record(match["method"], match["token"], fields)
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: ARG002
                return  # quiet: no stderr line per request

        return Handler


def _as_chat_id(value: Any) -> Any:
    """Telegram clients send chat_id as a JSON string or number; tests compare ints."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return value
