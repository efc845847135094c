"""``edge-inception serve export`` and ``serve run``: a Typer sub-app the main CLI adds with ``app.add_typer``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import finite, int_list
from ..cli_format import PlainTyper
from ..serve.config import InstanceKind, ServeKind

app = PlainTyper(name="serve", help="Triton Inference Server: export a model repository, run a server on it.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("export")
def export_cmd(
    artifact: Annotated[Path, typer.Argument(help="Built artifact (or its build folder), a bundle folder, or an ONNX model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model repository folder to write.")],
    kind: Annotated[ServeKind, typer.Option("--kind", help="native: Triton's own backend for the artifact (onnxruntime_onnx, tensorrt_plan, "
                                            "openvino; NGC containers); python: the toolkit's runner in Triton's Python backend.")
                    ] = ServeKind.native,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default <artifact>_<precision>).")] = None,
    preferred_batch: Annotated[str, typer.Option("--preferred-batch", help="dynamic_batching preferred batch sizes, comma-separated.")] = "",
    max_queue_delay_us: Annotated[int, typer.Option("--max-queue-delay-us", min=0, max=10_000_000,
                                                    help="dynamic_batching: longest wait for a batch to fill (microseconds).")] = 100,
    instances: Annotated[int, typer.Option("--instances", min=1, max=64, help="instance_group count.")] = 1,
    instance_kind: Annotated[InstanceKind, typer.Option("--instance-kind", help="instance_group kind (auto: the manifest's device).")
                             ] = InstanceKind.auto,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="model_warmup: one zero-data request at load.")] = True,
    preprocess: Annotated[bool, typer.Option("--preprocess", help="Add an ensemble taking encoded images (JPEG/PNG bytes): the toolkit's "
                                             "preprocessing in a Python model, then the classifier.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing repository (atomically): only one serve export wrote "
                                        "(its edge-inception.json lists everything in it) or an empty folder; never a link.")] = False,
) -> None:
    """Write a Triton model repository for an artifact, validated with Triton's model_config schema against its manifest."""
    from ..cli_common import handle_errors, shown
    from ..serve.repository import ExportOptions, export_repository

    @handle_errors
    def run() -> None:
        opts = ExportOptions(kind=kind, name=name, preferred_batch_sizes=int_list(preferred_batch, "--preferred-batch", allow_empty=True),
                             max_queue_delay_us=max_queue_delay_us, instances=instances, instance_kind=instance_kind, warmup=warmup,
                             preprocess=preprocess, force=force)
        result = export_repository(artifact, output, opts)
        for note in result.notes:
            typer.echo(f"note: {shown(note)}", err=True)
        typer.echo(f"models: {shown(', '.join(result.models))} ({shown(result.runtime)})")
        typer.echo(f"wrote {shown(result.repository)}")

    run()


@app.command("run")
def run_cmd(
    repository: Annotated[Path, typer.Argument(help="Model repository (from serve export).")],
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default; 0.0.0.0 serves the network).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", min=0, max=65535, help="HTTP/REST port (0: a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=0, max=65535, help="gRPC port (0: a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", min=0, max=65535, help="Prometheus metrics port (0: a free one).")] = 8002,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", callback=finite, min=1, max=3600,
                                                 help="Seconds to wait for the server to be ready.")] = 120.0,
    trust_repository: Annotated[bool, typer.Option("--trust-repository", help="Serve a repository serve export did not write (or one "
                                                   "changed since), as Triton reads it: its Python models (model.py) run as code.")] = False,
) -> None:
    """Start tritonserver on a repository (the one on PATH, else nvidia-pytriton's), print its endpoints, serve until Ctrl-C
    or SIGTERM, then stop it and every backend process.

    The repository must be what serve export wrote: every file in its edge-inception.json with its sha256, nothing else
    (no extra file or model folder, no link, FIFO or device); tritonserver serves a private copy made as it is checked.
    If tritonserver or a backend stub dies, serve run says so, stops the rest and exits 1 (it restarts nothing)."""
    from ..cli_common import handle_errors, shown
    from ..errors import ServeError
    from ..names import printable
    from ..serve.server import TritonServer, check_host, exposure_warning, find_tritonserver, is_loopback

    @handle_errors
    def run() -> None:
        install = find_tritonserver()
        if trust_repository:
            typer.echo(f"warning: --trust-repository: serving {printable(str(repository))} unchecked, as Triton reads it; its Python "
                       "models (model.py) run as code with your permissions", err=True)
        server = TritonServer(repository, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                              ready_timeout_s=ready_timeout, install=install, trust=trust_repository)
        if not is_loopback(check_host(host)):  # a host that is no host is refused before any warning
            typer.echo(f"warning: {exposure_warning(host)}", err=True)
        with server:
            assert server.endpoints is not None
            typer.echo(f"tritonserver ready ({shown(install.source)}); Ctrl-C stops it")
            for line in server.endpoints.lines(server.models):
                typer.echo(f"  {shown(line)}")
            raise ServeError(server.watch())

    run()
