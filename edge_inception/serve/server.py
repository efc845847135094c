"""``serve run``: a real ``tritonserver`` on a model repository, started, waited for, and stopped with every process it made.

Which server: the ``tritonserver`` on PATH (as in NGC's containers, with their native backends), else the one inside
nvidia-pytriton: ``make setup`` installs that wheel apart from the venv, in ``.venv/triton-site`` (it pins numpy<2),
with the NumPy 1.26 its Python backend needs. For that server this module does what pytriton itself does before a
start: a backend folder holding the Python backend and the stub built for this interpreter's Python version,
``LD_LIBRARY_PATH`` on the wheel's bundled libraries, and (unlike pytriton) the toolkit's import path for the model,
in ``EDGE_INCEPTION_SYS_PATH``, since the stub's embedded Python does not read ``PYTHONPATH``.

The server runs in its own process group (session): stopping sends SIGTERM to the group, waits, then SIGKILL, so that
no ``triton_python_backend_stub`` outlives it; the stubs' shared-memory regions it would leave in /dev/shm are removed after it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import ServeError
from ..fileio import private_tempdir
from ..names import printable
from .repository import copy_verified, validate_repository
from .shm import SHM_DIR, remove_own_file
from .site import backend_sys_path, triton_site

log = logging.getLogger(__name__)

SYS_PATH_ENV = "EDGE_INCEPTION_SYS_PATH"
REPOSITORY_ENV = "EDGE_INCEPTION_REPOSITORY"  # in tritonserver's environment (and its stubs'): the repository the user named
WATCH_INTERVAL_S = 0.5  # how often serve run looks at tritonserver and its backend stubs
EXIT_TIMEOUT_S = 5  # tritonserver's --exit-timeout-secs: in-flight requests get this long at shutdown
DEFAULT_READY_TIMEOUT_S = 120.0


def _dies_with(parent: int) -> Callable[[], None]:
    """For Popen's preexec_fn: the child gets SIGTERM when ``parent`` dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG),
    so a killed ``serve run`` leaves no tritonserver serving on (tritonserver stops its backend stubs on SIGTERM)."""

    def arm() -> None:
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return arm


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what it needs to start: its own backends (PATH), or pytriton's (the folder to build)."""

    binary: Path
    source: str  # for the user: "PATH" or "nvidia-pytriton 0.7.0 in ..."
    pytriton_dir: Path | None = None  # .../pytriton/tritonserver when the binary is nvidia-pytriton's
    libs: Path | None = None  # nvidia_pytriton.libs

    def stub(self) -> Path | None:
        if self.pytriton_dir is None:
            return None
        return self.pytriton_dir / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"


def find_tritonserver() -> TritonInstall:
    """The tritonserver on PATH, else nvidia-pytriton's (in the triton-site folder, or importable here)."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), "PATH")
    candidates = [triton_site()]
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent.parent)
    for site in candidates:
        base = site / "pytriton" / "tritonserver"
        binary = base / "bin" / "tritonserver"
        if binary.is_file() and os.access(binary, os.X_OK):
            versions = sorted(site.glob("nvidia_pytriton-*.dist-info"))
            version = versions[-1].name.removesuffix(".dist-info").split("-")[1] if versions else "?"
            return TritonInstall(binary, f"nvidia-pytriton {version} in {site}", base, site / "nvidia_pytriton.libs")
    raise ServeError(f"no tritonserver found: not on PATH (NGC's tritonserver containers have it) and no nvidia-pytriton in {triton_site()} "
                     "(make setup installs it there)")


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*")


def check_host(host: str) -> str:
    """``--host``: an IP address (127.0.0.1, ::1, 0.0.0.0) or an ASCII host name (RFC 1123), else :class:`ServeError`.
    An empty host would bind every interface, a non-ASCII one failed inside the socket module's IDNA codec."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if len(host) <= 253 and _HOSTNAME_RE.fullmatch(host):
        return host
    raise ServeError(f"--host {host[:80]!r}: expected an IP address (127.0.0.1, ::1, 0.0.0.0) or a host name of ASCII letters, digits, "
                     "'-' and '.'")


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine (127.0.0.0/8, ::1, localhost): anything else serves the network."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def exposure_warning(host: str) -> str:
    """The one line ``serve run`` prints for a --host other than loopback: what anyone who reaches it can do."""
    return (f"--host {printable(host, 80)}: Triton has no authentication: anyone who can reach this address can run inference over HTTP and "
            "gRPC, read every model's metadata, configuration and statistics, the repository index and the Prometheus metrics, and "
            "register shared memory; model control (load/unload) stays off")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ServeError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            raise ServeError(f"cannot bind {host}: {exc.strerror or exc}") from None
        return int(s.getsockname()[1])


PYTRITON_RUNTIMES = ("python", "ensemble")  # what nvidia-pytriton's server can run: its Python backend, and ensembles


def require_python_backend(repo: Path, models: list[str]) -> None:
    """nvidia-pytriton's tritonserver has only the Python backend: refuse, before starting it, a model that needs another."""
    from .config import parse

    for name in models:
        cfg = parse((repo / name / "config.pbtxt").read_text(encoding="utf-8"), f"{name}/config.pbtxt")
        runtime = cfg.backend or cfg.platform
        if runtime not in PYTRITON_RUNTIMES:
            raise ServeError(f"model {name} needs Triton's {runtime} backend, which nvidia-pytriton's tritonserver does not have: serve this "
                             "repository from NGC's tritonserver container (see README, Serving), or export it with --kind python")


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def grpc(self) -> str:
        return f"[{self.host}]:{self.grpc_port}" if ":" in self.host else f"{self.host}:{self.grpc_port}"

    def lines(self, models: list[str]) -> list[str]:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return [f"HTTP     http://{h}:{self.http_port}/v2", f"gRPC     {h}:{self.grpc_port}", f"metrics  http://{h}:{self.metrics_port}/metrics",
                *(f"model    grpc://{h}:{self.grpc_port}/{m}" for m in models)]


_LOG_ERROR = re.compile(r'^E\d{4} [\d:.]+\s+\d+\s+\S+\] "?(.*?)"?$')


def server_error(log_text: str) -> str:
    """The first error line of tritonserver's log (its own words), or its last line."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for ln in lines:
        m = _LOG_ERROR.match(ln)
        if m and "CudaDriverHelper" not in ln:
            return m.group(1).split("\\n")[0].strip()[:400]  # the log escapes a Python traceback's line breaks as \n
    for ln in lines:
        if ln.startswith("error:") or "failed to load" in ln:
            return ln[:400]
    return lines[-1][:400] if lines else "no output"


class TritonServer:
    """``with TritonServer(repo) as server:`` a started, ready tritonserver; leaving the block stops it and its process group.

    Ports 0 mean free ports picked here. ``ready_timeout_s`` bounds the wait: a server not ready by then is stopped and
    a :class:`ServeError` says why (its log's first error where it has one)."""

    def __init__(self, repo: str | Path, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S, install: TritonInstall | None = None, trust: bool = False) -> None:
        self.repo = Path(repo)
        self.trust = trust  # serve the repository in place, as Triton reads it (--trust-repository)
        self.served: Path | None = None  # what tritonserver reads: a checked private copy of repo, or repo itself (trust)
        self.host = host
        self.ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        self.ready_timeout_s = ready_timeout_s
        self.install = install
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.models: list[str] = []
        self.endpoints: Endpoints | None = None
        self.stubs: dict[int, tuple[str, str]] = {}  # the server's backend processes when it became ready (group())
        self.stub_regions: list[str] = []  # their shared-memory regions in /dev/shm (_stub_region)

    # lifecycle -------------------------------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Endpoints:
        """Check the repository, start tritonserver on it and wait until it is ready (bounded): its endpoints.

        Without ``trust`` the repository must be what ``serve export`` wrote: it is checked against its index and
        copied, as checked, into a private folder (0700) that tritonserver reads (:func:`copy_verified`), so that a
        file changed or a model added after the check is never served. With ``trust`` tritonserver reads it in place."""
        check_host(self.host)
        ports = {}
        for flag, port in self.ports.items():
            if not 0 <= port <= 65535:
                raise ServeError(f"{flag} must be in [0, 65535], got {port}")
            if port and not _port_free(self.host, port):
                raise ServeError(f"port {port} on {self.host} is in use ({flag}); choose another, or 0 for a free one")
            ports[flag] = port or _free_port(self.host)
        if len(set(ports.values())) != len(ports):
            raise ServeError(f"the HTTP, gRPC and metrics ports must differ, got {sorted(ports.values())}")
        install = self.install or find_tritonserver()
        self.workdir = private_tempdir("triton")
        try:
            if self.trust:
                self.served = self.repo.resolve()
            else:
                self.served = self.workdir / "repository"
                self.served.mkdir(mode=0o700)
                copy_verified(self.repo, self.served)
            self.models = validate_repository(self.served)
            if install.pytriton_dir is not None:
                require_python_backend(self.served, self.models)
        except BaseException:
            self.stop()
            raise
        cmd = [str(install.binary), f"--model-repository={self.served}", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
               f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
               *(f"{flag}={port}" for flag, port in ports.items()), "--log-info=true"]
        env = dict(os.environ)
        env[SYS_PATH_ENV] = os.pathsep.join(backend_sys_path())
        env[REPOSITORY_ENV] = str(self.repo.resolve())
        if install.pytriton_dir is not None:
            cmd.append(f"--backend-directory={self._pytriton_backends(install)}")
            cmd.append(f"--cache-directory={install.pytriton_dir / 'caches'}")
            if install.libs is not None:
                env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH", ""), str(install.libs)) if p)
        self.log_path = self.workdir / "tritonserver.log"
        self.endpoints = Endpoints(self.host, ports["--http-port"], ports["--grpc-port"], ports["--metrics-port"])
        log.info("starting %s (%s)", install.binary, install.source)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         preexec_fn=_dies_with(os.getpid()))
        try:
            self._wait_ready()
            self.stubs = self.group()  # before anyone is told it is ready: what watch() holds it to
            self.stub_regions = [r for r in map(_stub_region, self.stubs) if r is not None]
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    def _pytriton_backends(self, install: TritonInstall) -> Path:
        """A backends folder as pytriton prepares one: its Python backend, with the stub for this Python version. Links, not
        copies; the folder is writable because the stub compiles triton_python_backend_utils there."""
        assert self.workdir is not None and install.pytriton_dir is not None
        stub = install.stub()
        if stub is None or not stub.is_file():
            raise ServeError(f"{install.source} has no Python backend stub for Python {sys.version_info.major}.{sys.version_info.minor}")
        python = self.workdir / "backends" / "python"
        python.mkdir(parents=True)
        src = install.pytriton_dir / "backends" / "python"
        for f in src.iterdir():
            if f.is_file():
                (python / f.name).symlink_to(f)
        (python / "triton_python_backend_stub").symlink_to(stub)
        return python.parent

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except (OSError, AttributeError):
            return ""

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        assert self.proc is not None and self.endpoints is not None
        deadline = time.monotonic() + self.ready_timeout_s
        client = grpcclient.InferenceServerClient(self.endpoints.grpc)
        try:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ServeError(f"tritonserver exited (code {code}) before it was ready: {server_error(self.log_text())}")
                with contextlib.suppress(InferenceServerException):
                    if client.is_server_ready(client_timeout=1.0):
                        return
                if time.monotonic() > deadline:
                    raise ServeError(f"tritonserver was not ready within {self.ready_timeout_s:g} s (last log line: "
                                     f"{server_error(self.log_text())})")
                time.sleep(0.2)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM to the server's process group, up to the exit timeout plus 10 s, then SIGKILL to whatever is left of it."""
        regions = list(self.stub_regions)
        if self.proc is not None:  # and the regions of stubs started since (or of a server that never became ready)
            regions += [r for r in map(_stub_region, self.group()) if r is not None and r not in regions]
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=EXIT_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %d s of SIGTERM: killing it", EXIT_TIMEOUT_S + 10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stubs or a server that did not stop: the whole group
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        remove_stub_regions(regions)
        self.stub_regions = []
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def wait(self) -> int:
        """Block until the server exits on its own; its exit code."""
        assert self.proc is not None
        return self.proc.wait()

    def group(self) -> dict[int, tuple[str, str]]:
        """The processes of the server's process group but the server itself (its backend stubs): pid -> (start time in
        clock ticks since boot, what it is: its model's name where its command line says, from /proc)."""
        assert self.proc is not None
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.proc.pid:
                continue
            info = _proc_stat(int(entry))
            if info is None or info[1] != self.proc.pid or info[0] == "Z":
                continue
            found[int(entry)] = (info[2], _stub_model(int(entry), self.served))
        return found

    def watch(self, interval_s: float = WATCH_INTERVAL_S) -> str:
        """Block while the server and every backend stub it had when ready (:attr:`stubs`) run; then why not, in one line.

        Decision (issue 35): ``serve run`` does not restart anything. A stub that dies (the Python backend may start
        another, but requests in flight failed and the model's state is gone) or a server that exits ends the watch;
        the caller stops the whole group and exits non-zero, so that a supervisor (systemd, Kubernetes) that restarts
        it sees the failure."""
        assert self.proc is not None
        stubs = self.stubs
        while True:
            code = self.proc.poll()
            if code is not None:
                how = f"killed by signal {-code}" if code < 0 else f"code {code}"
                return f"tritonserver exited on its own ({how}): {printable(server_error(self.log_text()), 300)}"
            for pid, (start, what) in stubs.items():
                info = _proc_stat(pid)
                if info is None or info[2] != start or info[0] == "Z":
                    return f"{what} (pid {pid}) died; tritonserver stopped with it (serve run restarts nothing: run it again)"
            time.sleep(interval_s)


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, process group, start time) of ``pid`` from /proc/PID/stat; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ... starttime (field 22)
    try:
        return fields[0], int(fields[2]), fields[19]
    except (IndexError, ValueError):
        return None


STUB_REGION_RE = re.compile(r"triton_python_backend_shm_region_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _cmdline(pid: int) -> list[bytes] | None:
    """A process's arguments from /proc (None if it is gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def _is_stub(argv: list[bytes]) -> bool:
    return bool(argv) and argv[0].endswith(b"triton_python_backend_stub")


def _stub_region(pid: int) -> str | None:
    """The shared-memory region a Python backend stub and the server share (the stub's second argument; a file of
    /dev/shm), or None for another process. The name is checked against Triton's pattern before it nears a path."""
    argv = _cmdline(pid)
    if argv is None or len(argv) < 3 or not _is_stub(argv):
        return None
    name = argv[2].decode("ascii", errors="replace")
    return name if STUB_REGION_RE.fullmatch(name) else None


def remove_stub_regions(names: list[str]) -> None:
    """Remove the stubs' regions a server left in /dev/shm: its Python backend unlinks them when it stops in order, not
    when it or a stub is killed (SIGKILL, a crash), and each is 1 MB of memory until the machine restarts. Only names
    of Triton's pattern, only this user's files; call it once the server's process group is gone."""
    for name in names:
        if STUB_REGION_RE.fullmatch(name) and remove_own_file(SHM_DIR / name):
            log.debug("removed %s, which the server left", SHM_DIR / name)


def _stub_model(pid: int, repo: Path | None) -> str:
    """'the Python backend stub of model NAME' from a stub's command line (its first argument is the model's model.py)."""
    argv = _cmdline(pid)
    if argv is None:
        return "a backend process"
    if not _is_stub(argv):
        return f"backend process {printable(Path(argv[0].decode(errors='replace')).name, 60)}"
    if len(argv) > 1 and repo is not None:
        model = Path(argv[1].decode(errors="replace"))
        with contextlib.suppress(ValueError):
            return f"the Python backend stub of model {printable(model.relative_to(repo).parts[0], 80)}"
    return "a Python backend stub"
