"""Joining a Ray cluster, or starting a private one, always with Ray's token authentication.

Ray (>= 2.52) authenticates every control-plane RPC with one shared token when ``RAY_AUTH_MODE=token`` is set in the
environment of every process; the token comes from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``,
else ``~/.ray/auth_token`` (Ray's "Token Authentication" design notes). Without it, anyone who reaches a cluster's ports
can run code there, so this module never connects or starts a cluster without it.

``local``: a private single-node cluster for one run. Ray's node address is 127.0.0.1 only when Ray treats the machine
as single-node (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; otherwise Ray swaps 127.0.0.1 for the routable address and its
GCS listens on every interface): with it, the GCS server listens on 127.0.0.1 alone (checked with ``ss -ltn``). The token
is fresh per run (32 random bytes) and lives only in this process's environment.

Joining a head (``HOST:PORT``): ``ray.init`` retries an address that is not a Ray head for many minutes (its GCS client
tries each address for ~35 s, twenty times), and swaps a loopback host (``127.0.0.1``, ``localhost``, ``::1``) for the
machine's routable address before it dials. So :func:`probe_head` checks the address first, each step bounded by
``CONNECT_TIMEOUT_S``: a TCP connection; the HTTP/2 handshake every gRPC server answers (a listener that says nothing,
or something else, is refused here); then one GCS request through Ray's own GCS client with the token (a head that
refuses the token is said so). A loopback host is joined in Ray's single-node mode, which keeps the address as given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeInceptionError, require_modules

log = logging.getLogger(__name__)

LOCAL = "local"
CONNECT_TIMEOUT_S = 5.0  # a head that does not accept a TCP connection within this is reported, not waited for (Ray retries for minutes)
LOCAL_OBJECT_STORE_BYTES = 100 * 2**20  # the private cluster's object store: eval moves paths and top-k indices, not images
MAX_WORKERS = 256


class ClusterError(EdgeInceptionError):
    """A Ray cluster that cannot be reached, joined or used (address, token, a task that failed there)."""


@dataclass(frozen=True)
class Cluster:
    address: str  # "local" or HOST:PORT as given
    private: bool  # started for this run, stopped at its end
    startup_s: float  # seconds from the call to a usable cluster


MAX_TOKEN_CHARS = 4096  # Ray's tokens are 64 hex digits; a gRPC header value past a few KB is refused by the server
MAX_TOKEN_FILE_BYTES = 64 << 10
NO_TOKEN = "no Ray token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the head's token (on the head: ray get-auth-token)"


def _check_token_text(token: str, where: str) -> None:
    """A token Ray can send: one word of printable ASCII (a gRPC header value), at most :data:`MAX_TOKEN_CHARS`."""
    word = token.strip()
    if not word:
        raise ClusterError(f"{where}: the Ray token is empty")
    if len(word) > MAX_TOKEN_CHARS:
        raise ClusterError(f"{where}: a Ray token of {len(word):,} characters is not one (Ray's are 64 hex digits; at most "
                           f"{MAX_TOKEN_CHARS:,} taken)")
    if not all("!" <= c <= "~" for c in word):
        raise ClusterError(f"{where}: the Ray token holds characters a token cannot (spaces, control or non-ASCII characters)")


def token_source() -> str | None:
    """Where Ray will read the token from (the environment, a file), or None when there is none. The token is checked
    here as Ray would read it, so that Ray never reads what it cannot use: a token file must be a regular file of at
    most :data:`MAX_TOKEN_FILE_BYTES` (a FIFO or ``/dev/zero`` would block or fill memory inside Ray's loader, a missing
    one makes Ray's native client exit without a word), and the token one word of printable ASCII of at most
    :data:`MAX_TOKEN_CHARS`. Raises :class:`ClusterError` (one line) for a token that is there but unusable."""
    from ..fileio import read_regular

    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        _check_token_text(token, "RAY_AUTH_TOKEN")
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    default = Path.home() / ".ray" / "auth_token"
    if not path and not default.is_file():
        return None
    where = f"RAY_AUTH_TOKEN_PATH ({path})" if path else str(default)
    raw = read_regular(path or default, MAX_TOKEN_FILE_BYTES, "Ray token file", error=ClusterError)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ClusterError(f"{where}: the Ray token holds characters a token cannot (spaces, control or non-ASCII characters)") from None
    _check_token_text(text, where)
    return where


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises :class:`ClusterError` for anything else (Ray's GCS address, e.g. 10.0.0.5:6379)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(address) > 255:
        raise ClusterError(f"cluster address must be 'local' or HOST:PORT (the head's GCS port, 6379 by default), got {address[:80]!r}")
    if not all(c.isalnum() or c in ".-_[]:" for c in host):
        raise ClusterError(f"cluster address: invalid host {host[:80]!r}")
    return host.strip("[]"), int(port)


def check_address(address: str) -> None:
    """Refuse a bad address, or a remote one without a token, before any work (:class:`ClusterError`)."""
    if address == LOCAL:
        return
    parse_address(address)
    if token_source() is None:
        raise ClusterError(NO_TOKEN)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # the hosts Ray swaps for the routable address (services.resolve_ip_for_localhost)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # RFC 9113 3.4: the preface, an empty SETTINGS
H2_SETTINGS = 4  # frame type of the server's first frame (RFC 9113 3.4)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def speaks_grpc(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Whether a gRPC (HTTP/2) server answers at ``host:port`` within ``timeout_s`` for each step: a TCP connection, then
    the server's SETTINGS frame in answer to the client's preface. Raises :class:`ClusterError` saying which step failed."""
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise ClusterError(f"no Ray head answers at {where} within {timeout_s:g} s ({exc.strerror or exc})") from None
    with sock:
        try:
            sock.settimeout(timeout_s)
            sock.sendall(H2_PREFACE)
            header = _recv_exactly(sock, 9)
        except TimeoutError:
            raise ClusterError(f"{where} accepts connections but says nothing within {timeout_s:g} s: not a Ray head (its GCS port)") from None
        except OSError as exc:
            raise ClusterError(f"{where} closed the connection ({exc.strerror or exc}): not a Ray head (its GCS port)") from None
    if len(header) < 9 or header[3] != H2_SETTINGS:
        raise ClusterError(f"{where} answers, but not as a gRPC server: not a Ray head (its GCS port)")


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (native libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def probe_head(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Check, each step within ``timeout_s``, that a Ray head's GCS answers at ``host:port`` and takes this process's token
    (``RAY_AUTH_MODE=token`` and the token set): :func:`speaks_grpc`, then one GCS request through Ray's GCS client.
    Raises :class:`ClusterError` (one line: closed port, not a Ray head, the token refused, no answer)."""
    speaks_grpc(host, port, timeout_s)
    import ray.exceptions
    from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]  # Ray's GCS client (Cython, no stubs)

    address = f"{host}:{port}"
    try:
        with _stderr_silenced():  # Ray's C++ client logs each failed try to fd 2: the error below says it once
            client = InnerGcsClient.standalone(address, None, int(timeout_s * 1000))
            client.internal_kv_get(b"edge-inception-probe", None, timeout=timeout_s)
    except ray.exceptions.AuthenticationError:
        raise ClusterError(f"the Ray head at {address} refused the token (set RAY_AUTH_TOKEN to the head's: on the head, "
                           "ray get-auth-token)") from None
    except (ray.exceptions.RayError, ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise ClusterError(f"{address} speaks gRPC but is not a Ray head that answers within {timeout_s:g} s "
                           f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None


def quiet_ray_loggers() -> None:
    """Ray's and Ray Data's Python loggers to errors only: their notes and progress lines are not the command's output."""
    for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)


def check_head(address: str) -> tuple[str, int]:
    """Before joining the head at ``HOST:PORT``: the address's form, a token at hand, and :func:`probe_head` (bounded);
    a loopback host switches this process to Ray's single-node mode first (Ray must not be imported yet, then).
    Returns (host, port); raises :class:`ClusterError` (one line)."""
    host, port = parse_address(address)
    if token_source() is None:
        raise ClusterError(NO_TOKEN)
    if host in LOOPBACK_HOSTS:  # Ray would dial the routable address instead (see the module's notes)
        if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            raise ClusterError(f"Ray was imported before joining {host}: join a loopback head in a fresh process")
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"  # the probe's GCS client sends the token only in this mode
    probe_head(host, port)
    return host, port


@contextlib.contextmanager
def connect(address: str, *, num_cpus: int = 1) -> Iterator[Cluster]:
    """Connect this process to the cluster at ``address`` (``HOST:PORT``, token from the environment or Ray's token
    file), or start a private one (``local``, ``num_cpus`` CPUs, a fresh token, 127.0.0.1 only); disconnect, and stop
    a private cluster, on the way out (also on error or Ctrl-C).

    Raises :class:`ClusterError` for a bad address, a head that does not answer, or no token for a remote head;
    :class:`~edge_inception.errors.MissingDependencyError` without Ray (the ``[cluster]`` extra)."""
    import time

    require_modules("a Ray cluster", "ray")
    if "ray" in sys.modules and address == LOCAL and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        raise ClusterError("Ray was imported before the private cluster's settings were made: start 'local' in a fresh process")
    t0 = time.perf_counter()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED",
                                            "RAY_gcs_server_port_wait_time_s")}
    temp_dir: str | None = None
    try:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine
        if address == LOCAL:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray keeps 127.0.0.1 as the node's address (see the module's notes)
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
            # address="local": always a new cluster (None would join one a `ray start` left on this machine); its own temp folder
            temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)  # short: Ray's socket paths
            init_args: dict = {"address": "local", "num_cpus": num_cpus, "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                               "include_dashboard": False, "_node_ip_address": "127.0.0.1", "_temp_dir": temp_dir}
        else:
            host, port = check_head(address)
            os.environ["RAY_gcs_server_port_wait_time_s"] = str(int(CONNECT_TIMEOUT_S))  # ray.init's own GCS retries, bounded
            init_args = {"address": f"{host}:{port}"}
        import ray

        quiet_ray_loggers()
        try:
            ray.init(**init_args, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0][:300]}") from None
        yield Cluster(address, address == LOCAL, time.perf_counter() - t0)
    finally:
        if "ray" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["ray"].shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
