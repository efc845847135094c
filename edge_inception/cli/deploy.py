"""What goes to the device: ``bundle``, ``check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import (
    handle_errors,
    note,
    shown,
)
from ..cli_format import PlainTyper

app = PlainTyper()  # merged into the root app (no group of its own)


@app.command()
@handle_errors
def bundle(
    model: Annotated[Path, typer.Argument(help="ONNX model to deploy (fp32, or fp16/int8 from quantize).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Device preset (see 'targets') or a TOML file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle folder (default <name>.<target>.bundle).")] = None,
    references: Annotated[int, typer.Option("--references", min=1, max=64, help="Reference images to carry.")] = 8,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle folder (atomically).")] = False,
) -> None:
    """One folder to copy to the device: the ONNX, preprocessing, labels, preset, reference data, build.sh (edge-inception and trtexec)."""
    from ..deploy.bundle import make_bundle

    result = make_bundle(model, target, output, force=force, references=references)
    for line in result.build_commands:
        typer.echo(f"  {shown(line)}")
    typer.echo(f"wrote {shown(result.folder)} ({len(result.files)} files); bundle.json sha256 {result.bundle_sha256}")


@app.command()
@handle_errors
def check(
    artifact: Annotated[Path, typer.Argument(help="Artifact, build folder, or an engine trtexec built.")],
    reference: Annotated[Path, typer.Option("--reference", help="A bundle's reference/ folder.")],
    target: Annotated[str | None, typer.Option("--target", help="For a trtexec engine: the preset it was built for (default: the bundle's).")] = None,
) -> None:
    """Replay a bundle's reference inputs through an artifact; compare with the workstation's outputs."""
    from ..deploy.check import check_artifact

    r = check_artifact(artifact, reference, target=target)
    p = r.parity
    typer.echo(f"check passed: {shown(r.artifact.name)} ({r.precision} on {r.device}) on {p.samples} reference images: max rel error "
               f"{p.max_rel_error:.2e}, mean cosine {p.mean_cosine:.5f}, top-1 agreement {p.top1_agreement:.1%}")
    typer.echo(f"bundle verified: every file matches bundle.json (sha256 {r.bundle_sha256}: compare with what 'bundle' printed)")
    if r.added_wheels:
        note(f"note: wheels/ also holds {len(r.added_wheels)} wheel(s) the bundle does not list (dependencies added here): "
             f"{', '.join(r.added_wheels[:5])}{' ...' if len(r.added_wheels) > 5 else ''}")
    if r.adopted:
        typer.echo(f"adopted: wrote {shown(r.artifact.name)}.manifest.json")
