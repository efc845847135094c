"""onnxsim simplification with BatchNorm folded into the convolutions, verified before vs after."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VerificationError, require_modules
from ..evaluate.verify import StepReport, parity_over, require, verification_inputs
from ..fileio import atomic_path
from ..onnx_file import get_metadata, load_onnx, model_facts, ort_session, run_session, set_metadata

log = logging.getLogger(__name__)

SIMPLIFY_REL_TOL = 1e-4


def simplify_onnx(model, inputs: list[np.ndarray]) -> tuple[Any, StepReport]:  # (onnx.ModelProto, its report)
    """Simplify an in-memory ONNX model and prove it computes the same logits on ``inputs``."""
    require_modules("simplify", "onnxsim")
    import onnx
    import onnxsim

    meta = get_metadata(model)
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises plain RuntimeErrors from its C++ core
        raise VerificationError(f"onnxsim failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not ok:
        raise VerificationError("onnxsim could not validate the simplified model; nothing written")
    leftover = [n.name or n.op_type for n in simplified.graph.node if n.op_type == "BatchNormalization"]
    if leftover:
        raise VerificationError(f"BatchNormalization not folded into its convolution: {leftover[0]}")
    del simplified.metadata_props[:]  # onnxsim appends a dozen bookkeeping entries; keep ours only
    set_metadata(simplified, {**meta, "simplified": "onnxsim"})
    onnx.checker.check_model(simplified, full_check=True)

    before = ort_session(model.SerializeToString(), optimize=False)
    after = ort_session(simplified.SerializeToString(), optimize=False)
    parity = parity_over(inputs, lambda b: run_session(before, b), lambda b: run_session(after, b))
    require(parity, rel_tol=SIMPLIFY_REL_TOL, step="simplify (before vs after)")
    log.info("simplify verified: %d -> %d nodes, max rel error %.2e", len(model.graph.node), len(simplified.graph.node), parity.max_rel_error)
    return simplified, StepReport("simplify", "onnx (before simplify)", parity, sorted({b.shape[0] for b in inputs}))


def simplify_file(source: str | Path, output: str | Path | None = None, seed: int = 0) -> tuple[Path, StepReport]:
    """``edge-inception simplify``: simplify an ONNX file; writes ``output`` (default: ``<name>.sim.onnx``)."""
    import onnx

    src = Path(source)
    model = load_onnx(src)
    facts = model_facts(model, str(src))  # refuses what is not an image classifier, in one line
    inputs = verification_inputs(facts.image_size, facts.fixed_batch, seed)
    simplified, step = simplify_onnx(model, inputs)
    out = Path(output) if output is not None else src.with_name(src.stem + ".sim.onnx")
    with atomic_path(out) as tmp:
        onnx.save(simplified, str(tmp))
    return out, step
