"""Joining a Ray cluster, or starting a private one, always with Ray's token authentication.

Ray (>= 2.52) authenticates every control-plane RPC with one shared token when ``RAY_AUTH_MODE=token`` is set in the
environment of every process; the token comes from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``,
else ``~/.ray/auth_token`` (Ray's "Token Authentication" design notes). Without it, anyone who reaches a cluster's ports
can run code there, so this module never connects or starts a cluster without it.

``local``: a private single-node cluster for one run. Ray's node address is 127.0.0.1 only when Ray treats the machine
as single-node (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; otherwise Ray swaps 127.0.0.1 for the routable address and its
GCS listens on every interface): with it, the GCS server listens on 127.0.0.1 alone (checked with ``ss -ltn``). The token
is fresh per run (32 random bytes) and lives only in this process's environment.
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


def token_source() -> str | None:
    """Where Ray will read the token from (the environment, a file), or None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})"
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


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
        raise ClusterError("no Ray token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the head's token (on the head: ray get-auth-token)")


def _reachable(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(f"no Ray head answers at {host}:{port} within {CONNECT_TIMEOUT_S:g} s ({exc.strerror or exc})") from None


def quiet_ray_loggers() -> None:
    """Ray's and Ray Data's Python loggers to errors only: their notes and progress lines are not the command's output."""
    for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)


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
    os.environ["RAY_AUTH_MODE"] = "token"
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine
    if address == LOCAL:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray keeps 127.0.0.1 as the node's address (see the module's notes)
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        # address="local": always a new cluster (None would join one a `ray start` left on this machine); its own temp folder
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)  # short: Ray's socket paths
        init_args: dict = {"address": "local", "num_cpus": num_cpus, "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                           "include_dashboard": False, "_node_ip_address": "127.0.0.1", "_temp_dir": temp_dir}
    else:
        host, port = parse_address(address)
        if token_source() is None:
            raise ClusterError("no Ray token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the head's token "
                               "(on the head: ray get-auth-token)")
        _reachable(host, port)
        init_args = {"address": f"{host}:{port}"}
    import ray

    quiet_ray_loggers()
    try:
        try:
            ray.init(**init_args, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0][:300]}") from None
        yield Cluster(address, address == LOCAL, time.perf_counter() - t0)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if address == LOCAL:
            shutil.rmtree(init_args["_temp_dir"], ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
