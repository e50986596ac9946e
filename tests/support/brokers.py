"""Private broker instances for the chaos and broker-restart tests.

The shared Redis (6379) and RabbitMQ (5672) on this machine are never restarted by a test: each test
that restarts its broker starts its own instance on a free port, as a subprocess of the test, and
stops it at the end.

* ``PrivateRedis``: ``redis-server --daemonize no`` with its own ``--dir``; ``persist=False`` runs
  without RDB or AOF (a restart loses every key, like a crashed cache), ``persist=True`` with
  ``--appendonly yes`` (a restart keeps queued and unacked messages).
* ``PrivateRabbit``: a second RabbitMQ node ``<name>@localhost`` whose database, logs, plugins file,
  config and Erlang cookie all live in its work dir. ``HOME`` is set to the work dir for the node and
  for ``rabbitmqctl``, so both read the same ``$HOME/.erlang.cookie``. The node is started with
  ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (the ``/usr/sbin`` wrapper would ``su`` to the
  ``rabbitmq`` user and read the system node's config and env file). Its mnesia dir survives a
  restart, so durable queues, persistent messages and the ``guest`` user do too. ``guest`` may
  connect from 127.0.0.1 (``loopback_users.guest = true``, the default).

Measured on the development machine (2 CPUs): Redis start ~15 ms, restart ~15-50 ms plus ``down_s``;
RabbitMQ first start ~5-7 s (fresh database), restart ~6 s plus ``down_s`` (graceful or SIGKILL),
stop ~1 s.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
RABBIT_BIN = Path(os.environ.get("MLSIG_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
LOCALHOST = "127.0.0.1"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the dist port binds 0.0.0.0
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOCALHOST, port)) == 0


def free_port(offsets: tuple[int, ...] = (0,)) -> int:
    """A free TCP port ``p`` on 127.0.0.1 (``p + o`` free too for each ``o`` in ``offsets``).

    Chosen below the kernel's ephemeral range (20000-32767), so that no outgoing connection takes it
    between this call and the broker's bind, and so that ``p + 20000`` (RabbitMQ's dist port) fits.
    """
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 32768)
        if all(_port_is_free(port + offset) for offset in offsets):
            return port
    raise RuntimeError("no free port found")


def free_rabbit_port() -> int:
    """A free AMQP port whose dist port (``+20000``) is free too."""
    return free_port((0, 20000))


def _wait(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


def _send_shutdown(port: int) -> None:
    """``SHUTDOWN NOSAVE`` over a raw socket (redis-py would retry, with backoff, on the close)."""
    with suppress(OSError), socket.create_connection((LOCALHOST, port), timeout=2) as sock:
        sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        while sock.recv(4096):  # the server closes the connection as it exits
            pass


class _PrivateServer(ABC):
    """What both private servers share: a restart is a stop (``hard``: SIGKILL) and a start."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def kill(self) -> None: ...

    def restart(self, down_s: float = 0.0, *, hard: bool = False) -> None:
        """Stop (``hard``: SIGKILL), stay down ``down_s`` seconds, start again."""
        if hard:
            self.kill()
        else:
            self.stop()
        if down_s > 0:
            time.sleep(down_s)  # the outage itself, not a synchronisation
        self.start()


class PrivateRedis(_PrivateServer):
    """A redis-server subprocess on ``port`` with its data in ``workdir``."""

    def __init__(self, port: int, workdir: Path, *, persist: bool = False) -> None:
        self.port = port
        self.workdir = Path(workdir)
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / f"redis-{port}.log"

    def url(self, db: int = 0) -> str:
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host=LOCALHOST, port=self.port, db=db, socket_timeout=2, socket_connect_timeout=2)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def start(self, timeout: float = 20.0) -> None:
        """Start the server; returns when it answers PING."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", LOCALHOST,
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--protected-mode", "no",
            "--logfile", "",
        ]  # fmt: skip
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait(self._ping, timeout, f"private redis on {self.port} did not answer PING")

    def stop(self, timeout: float = 20.0) -> None:
        """``SHUTDOWN NOSAVE`` (AOF, if on, is still flushed); returns when the port is closed."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            _send_shutdown(self.port)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        _wait(lambda: not _port_is_open(self.port), timeout, f"port {self.port} still open")

    def kill(self) -> None:
        """SIGKILL: a crash, no AOF flush."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        _wait(lambda: not _port_is_open(self.port), 10, f"port {self.port} still open")


class PrivateRabbit(_PrivateServer):
    """A RabbitMQ node ``<name>@localhost`` on ``port`` (dist port ``port + 20000``)."""

    def __init__(self, port: int, workdir: Path, name: str = "chaos") -> None:
        if port + 20000 > 65535:
            raise ValueError(f"port {port}: its dist port {port + 20000} is above 65535")
        self.port = port
        self.dist_port = port + 20000
        self.workdir = Path(workdir)
        self.name = name
        self.node = f"{name}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "server.out"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOCALHOST}:{self.port}//"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        """The environment of the node and of ``rabbitmqctl`` (same HOME, so the same cookie)."""
        w = self.workdir
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return keep | {
            "HOME": str(w),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": LOCALHOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(w / f"{self.name}.pid"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),  # not the system node's NODENAME
            "ERL_EPMD_ADDRESS": LOCALHOST,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _prepare(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        cookie = w / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"MLSIGCHAOS{random.getrandbits(64):016X}")
            cookie.chmod(0o400)
        (w / "enabled_plugins").write_text("[].\n")
        (w / "rabbitmq-env.conf").write_text("")
        (w / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {LOCALHOST}:{self.port}\n"
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 50MB\n"
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def start(self, timeout: float = 90.0) -> None:
        """Start the node; returns when ``rabbitmqctl await_startup`` says it runs and AMQP is open."""
        if self.running:
            return
        self._prepare()
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                cwd=self.workdir,
                env=self.env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # stop() may signal its process group (sh, beam, children)
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"rabbitmq-server exited with {code}: {self._log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"private rabbit {self.node} did not start: {self._log_tail()}")
            # await_startup fails at once while the node is not yet registered in epmd; retry.
            result = self.ctl("await_startup", "--timeout", str(max(1, int(left))), timeout=left + 10)
            if result.returncode == 0 and _port_is_open(self.port):
                return
            time.sleep(0.25)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to the ``rabbitmq-server`` script (it stops the node cleanly); returns when the
        process has exited and the AMQP port is closed."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # beam may outlive the script by a moment: wait for its group to be gone.
        _wait(lambda: not _group_alive(process.pid), timeout, f"{self.node} processes still alive")
        _wait(lambda: not _port_is_open(self.port), timeout, f"port {self.port} still open")

    def kill(self) -> None:
        """SIGKILL the whole node (a crash): unsynced messages may be lost."""
        process, self.process = self.process, None
        if process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        _wait(lambda: not _group_alive(process.pid), 20, f"{self.node} processes still alive")
        _wait(lambda: not _port_is_open(self.port), 20, f"port {self.port} still open")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def private_redis(workdir: Path, *, port: int | None = None, persist: bool = False) -> Iterator[PrivateRedis]:
    server = PrivateRedis(port or free_port(), workdir, persist=persist)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def private_rabbit(
    workdir: Path, *, port: int | None = None, name: str | None = None
) -> Iterator[PrivateRabbit]:
    """A started node; its default name ``chaos<port>`` lets several run side by side."""
    port = port or free_rabbit_port()
    node = PrivateRabbit(port, workdir, name or f"chaos{port}")
    node.start()
    try:
        yield node
    finally:
        node.stop()
