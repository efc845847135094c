"""``fleet``: the boards of a Ray cluster (nodes labelled with a board name and a target preset), their facts, and one
benchmark of a bundle on every selected board, in one report.

A board joins a head with ``RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... ray start --address HEAD:6379 --labels
edge-inception-board=NAME,edge-inception-target=PRESET``. ``fleet bench`` sends the bundle's files (bytes, through
Ray's object store) to one task per board, pinned to that node; each task runs :func:`~edge_inception.cluster.board.run_board`.
A board that fails, does not answer within ``timeout_s`` or leaves the cluster is a row saying so; Ctrl-C cancels the
tasks started.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgeInceptionError
from ..names import UnsafeNameError, check_name
from ..report import Axis, Bars, Figure, Series, md_text
from .board import BOARD_LABEL, MAX_BUNDLE_BYTES, MAX_BUNDLE_FILES, TARGET_LABEL
from .connect import ClusterError, check_address, connect

log = logging.getLogger(__name__)


@dataclass
class Board:
    name: str
    node_id: str
    target: str | None
    alive: bool
    address: str
    facts: dict[str, Any] = field(default_factory=dict)


def _boards(ray: Any) -> list[Board]:
    out = []
    for node in ray.nodes():
        labels = node.get("Labels") or {}
        name = labels.get(BOARD_LABEL)
        if not name:
            continue
        try:
            check_name(name, "board label")
            target = labels.get(TARGET_LABEL)
            if target:
                check_name(target, "target label")
        except UnsafeNameError as exc:
            log.warning("a node with an unusable label is left out: %s", exc)
            continue
        out.append(Board(name, str(node["NodeID"]), target or None, bool(node.get("Alive")), str(node.get("NodeManagerAddress", ""))[:64]))
    return sorted(out, key=lambda b: b.name)


def _select(boards: list[Board], selector: str | None) -> list[Board]:
    if not selector:
        return boards
    patterns = [p.strip() for p in selector.split(",") if p.strip()]
    return [b for b in boards if any(fnmatch.fnmatchcase(b.name, p) or (b.target and fnmatch.fnmatchcase(f"target={b.target}", p))
                                     for p in patterns)]


def _on(ray: Any, node_id: str) -> dict[str, Any]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False), "num_cpus": 1, "max_retries": 0}


def fleet_status(address: str, *, timeout_s: float = 30.0) -> list[Board]:
    """The cluster's boards (nodes with a board label), each alive one's facts gathered on it within ``timeout_s``."""
    with connect(address):
        import ray

        from .board import facts

        boards = _boards(ray)
        remote = ray.remote(facts)
        refs = {b.name: remote.options(**_on(ray, b.node_id)).remote() for b in boards if b.alive}
        done, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        for b in boards:
            ref = refs.get(b.name)
            if ref is not None and ref in done:
                try:
                    b.facts = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    b.facts = {"error": str(exc).splitlines()[0][:200]}
            elif ref is not None:
                ray.cancel(ref, force=True)
                b.facts = {"error": f"no answer within {timeout_s:g} s"}
    return boards


def pack_bundle(folder: str | Path) -> dict[str, bytes]:
    """A bundle folder's regular files as {relative name: bytes} (one or two levels, no links), bounded in count and
    size; the board checks them against ``bundle.json``."""
    root = Path(folder)
    if not (root / "bundle.json").is_file():
        raise EdgeInceptionError(f"{root}: not a bundle folder (no bundle.json); make one with 'edge-inception bundle'")
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_symlink() or not path.is_file() or len(rel.parts) > 2 or rel.parts[0] == "build":
            continue
        total += path.stat().st_size
        if len(files) >= MAX_BUNDLE_FILES or total > MAX_BUNDLE_BYTES:
            raise EdgeInceptionError(f"{root}: more than {MAX_BUNDLE_FILES} files or {MAX_BUNDLE_BYTES >> 20} MiB; not a bundle")
        files["/".join(rel.parts)] = path.read_bytes()
    return files


@dataclass
class FleetReport:
    bundle: str
    rows: list[dict[str, Any]]
    seconds: float

    def ranked(self) -> list[dict[str, Any]]:
        """Rows that completed, fastest batch-1 p50 first; then the others (failed, refused, timed out, lost)."""
        def key(row: dict[str, Any]) -> tuple[int, float]:
            p50 = next((r["latency_ms"].get("p50", 0.0) for r in row.get("bench") or [] if r["batch"] == min(x["batch"] for x in row["bench"])), None)
            return (0, p50) if row.get("status") == "ok" and p50 is not None else (1, 0.0)
        return sorted(self.rows, key=key)

    def as_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "seconds": round(self.seconds, 2), "boards": self.ranked()}

    def as_markdown(self) -> str:
        return markdown(self)

    def as_figure(self) -> Figure:
        return figure(self)


def fleet_bench(bundle: str | Path, address: str, *, selector: str | None = None, batches: tuple[int, ...] = (1,),
                timeout_s: float = 600.0, iterations: int = 30, rounds: int = 2) -> FleetReport:
    """Build, check and bench ``bundle`` on every selected board of the cluster at ``address``; one row per board.

    ``timeout_s`` bounds each board (from the start of the run); a board past it is cancelled and reported "timed out",
    one whose node died "lost". Raises :class:`ClusterError` when no board is selected."""
    from .board import run_board

    check_address(address)
    files = pack_bundle(bundle)
    t0 = time.monotonic()
    with connect(address):
        import ray

        boards = [b for b in _select(_boards(ray), selector) if b.alive]
        if not boards:
            raise ClusterError(f"no live board matches {selector!r}" if selector else "the cluster has no live board (nodes labelled "
                               f"{BOARD_LABEL}=NAME)")
        files_ref = ray.put(files)
        remote = ray.remote(run_board)
        refs = {remote.options(**_on(ray, b.node_id)).remote(files_ref, b.target, batches, iterations, rounds): b for b in boards}
        rows: list[dict[str, Any]] = []
        pending = list(refs)
        try:
            while pending:
                left = timeout_s - (time.monotonic() - t0)
                done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, left))
                for ref in done:
                    board = refs[ref]
                    try:
                        row = ray.get(ref)
                    except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError, ray.exceptions.ActorDiedError) as exc:
                        row = {"status": "lost", "error": f"the board left the cluster: {type(exc).__name__}"}
                    except ray.exceptions.RayError as exc:
                        row = {"status": "failed", "error": str(exc).splitlines()[0][:300]}
                    rows.append({"board": board.name, "label_target": board.target, **row})
                if not done and left <= 0:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                        rows.append({"board": refs[ref].name, "label_target": refs[ref].target, "status": "timed out",
                                     "error": f"no answer within {timeout_s:g} s"})
                    pending = []
        except BaseException:  # Ctrl-C, SIGTERM: stop what was started on the boards
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    return FleetReport(str(bundle), rows, time.monotonic() - t0)


def markdown(report: FleetReport) -> str:
    lines = [f"# fleet bench: {md_text(Path(report.bundle).name)}", "", "| rank | board | status | target | batch | p50 ms | p99 ms | images/s | "
             "check | CPU | ISA | memory | GPU | L4T | marked |", "|" + "---|" * 15]
    for rank, row in enumerate(report.ranked(), 1):
        f = row.get("facts") or {}
        mark = []
        if row.get("disturbed_rounds"):
            mark.append(f"{row['disturbed_rounds']} disturbed round(s)")
        before, after = row.get("clocks_before") or {}, row.get("clocks_after") or {}
        if before.get("cpu0_khz") and after.get("cpu0_khz") and after["cpu0_khz"] < 0.9 * before["cpu0_khz"]:
            mark.append("clock dropped")
        if before.get("loadavg_1m") is not None and after.get("loadavg_1m") is not None and after["loadavg_1m"] > before["loadavg_1m"] + 0.5:
            mark.append("load rose")
        check = row.get("check") or {}
        common = [f.get("cpu", "?"), " ".join(f.get("simd", [])), f"{f.get('memory_mib', '?')} MiB", ", ".join(f.get("gpu") or []) or "-",
                  f.get("l4t") or "-", ", ".join(mark) or "-"]
        benches = row.get("bench") or [None]
        for b in benches:
            cells = [str(rank), row["board"], row["status"] if not row.get("error") else f"{row['status']}: {row['error']}",
                     str(row.get("target") or row.get("label_target") or "-")]
            if b:
                ms = b["latency_ms"]
                cells += [str(b["batch"]), f"{ms.get('p50', 0):.2f}", f"{ms.get('p99', 0):.2f}", f"{b['throughput_ips']:.1f}"]
            else:
                cells += ["-", "-", "-", "-"]
            cells.append(f"passed (top-1 agreement {check['top1_agreement']:.0%})" if check.get("passed") else "-")
            lines.append("| " + " | ".join(md_text(c) for c in cells + common) + " |")
    return "\n".join(lines) + "\n"


def figure(report: FleetReport) -> Figure:
    """The plot: each board that finished, its p50 at the smallest batch, fastest on top."""
    rows = [r for r in report.ranked() if r.get("status") == "ok"]
    bars = Bars("", [r["board"] for r in rows], [Series("p50", [r["bench"][0]["latency_ms"].get("p50", 0) for r in rows])],
                Axis("p50 latency, smallest batch", "ms"), horizontal=True)
    return Figure([bars], width=7, height=1 + 0.5 * max(1, len(rows)))
