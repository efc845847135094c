"""``edge-inception fleet status`` and ``fleet bench``: a Typer sub-app the main CLI adds with ``app.add_typer``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import finite, int_list
from ..cli_format import PlainTyper

app = PlainTyper(name="fleet", help="A fleet of boards joined to a Ray cluster (token auth): their facts, one benchmark on all of them.",
                 no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("status")
def status_cmd(
    address: Annotated[str, typer.Argument(help="The head's HOST:PORT (Ray's GCS port); the token in RAY_AUTH_TOKEN.")],
    timeout: Annotated[float, typer.Option("--timeout", callback=finite, min=1, max=3600, help="Seconds to wait for each board's facts.")] = 30.0,
) -> None:
    """List the boards (nodes labelled edge-inception-board=NAME): alive, target, CPU and ISA flags, memory, GPU."""
    from ..cli_common import echo_table, handle_errors
    from ..cluster.fleet import fleet_status

    @handle_errors
    def run() -> None:
        boards = fleet_status(address, timeout_s=timeout)
        rows = []
        for b in boards:
            f = b.facts
            rows.append([b.name, "alive" if b.alive else "dead", b.target or "-", str(f.get("cpu", f.get("error", "-")))[:48],
                         " ".join(f.get("simd", [])) or "-", str(f.get("memory_mib", "-")), ", ".join(f.get("gpu") or []) or "-",
                         str(f.get("l4t") or "-")[:40]])
        if not rows:
            typer.echo("no boards: nodes join with ray start --address HEAD --labels edge-inception-board=NAME,edge-inception-target=PRESET")
            return
        echo_table(rows, ["board", "state", "target", "CPU", "ISA", "MiB", "GPU", "L4T"])

    run()


@app.command("bench")
def bench_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (from 'edge-inception bundle').")],
    cluster: Annotated[str, typer.Option("--cluster", help="The head's HOST:PORT; the token in RAY_AUTH_TOKEN.")],
    boards: Annotated[str | None, typer.Option("--boards", help="Board names or target=PRESET, comma-separated, shell wildcards (default all).")
                      ] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1",
    timeout: Annotated[float, typer.Option("--timeout", callback=finite, min=1, max=24 * 3600,
                                           help="Seconds each board may take (a board past it is a row "
                                           "saying so).")] = 600.0,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=100_000, help="Timed inferences per batch size per round.")] = 30,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="Rounds on each board.")] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write the Markdown table here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")] = None,
) -> None:
    """On every selected board: verify the bundle (its own hashes), build it for the board's target, check, bench; one
    report with a row per board, ranked by p50."""
    from ..cli_common import handle_errors, write_outputs
    from ..cluster.fleet import fleet_bench
    from ..fileio import PNG_FILE, check_outputs, require_suffix

    @handle_errors
    def run() -> None:
        require_suffix(plot_out, PNG_FILE)
        check_outputs(json_out, markdown_out, plot_out, inputs=[bundle])
        report = fleet_bench(bundle, cluster, selector=boards, batches=int_list(batch, "--batch"), timeout_s=timeout, iterations=iterations,
                             rounds=rounds)
        typer.echo(report.as_markdown().split("\n", 2)[2].rstrip())
        write_outputs(report, json=json_out, markdown=markdown_out, png=plot_out, inputs=[bundle])

    run()
