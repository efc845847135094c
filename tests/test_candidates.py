"""Candidates across backends and precisions: the plan (what a target allows and this machine can run) and the ship
decision, as plain functions on hand-made inputs; presets naming one backend or a list."""

import json
from pathlib import Path

import pytest

from edge_inception.engines.candidates import (
    NOISE,
    BackendExtras,
    Candidate,
    Evidence,
    Measured,
    backend_extras,
    choose_ship,
    cpu_float_precisions,
    isa_used,
    judge_candidate,
    missing_backends,
    plan_candidates,
    quant_target,
)
from edge_inception.engines.choose import CUDA, TENSORRT, Availability
from edge_inception.engines.targets import get_target, parse_target
from edge_inception.errors import TargetError
from edge_inception.vocab import Backend, Precision, QuantTarget

ALL = (Precision.fp32, Precision.fp16, Precision.int8)
CPU_HERE = Availability(None, None, None)
NO_TRT = "TensorRT is not installed"


def m(backend: str, precision: str, p50: float | None, agreement: float | None = 1.0, failure: str | None = None, *, photos: int = 1000,
      cosine: float = 1.0, rel: float = 0.0, **kw) -> Measured:
    """A measured candidate; by default its evidence is ample (1000 photos) and its logits exact."""
    evidence = None if agreement is None else Evidence(agreement, photos, photos, cosine, rel)
    return Measured(Candidate(Backend(backend), Precision(precision), **kw), p50, evidence, failure)


def judged(precision: str, agreement: float = 1.0, photos: int = 1000, cosine: float = 1.0, rel: float = 0.0, samples: int | None = None,
           **kw) -> tuple[str, str]:
    j = judge_candidate(Candidate(Backend.ort, Precision(precision), **kw), Evidence(agreement, samples or photos, photos, cosine, rel), 0.99)
    return j.status, j.reason


# ---- the judge ---------------------------------------------------------------------------------------------------------

def test_int8_is_judged_by_agreement_at_95_percent_confidence_over_photos():
    # the case: 99 of 100 photos agree. Wilson, z = 1.6449, z^2 = 2.7055: centre 0.99 + 2.7055/200 = 1.003528;
    # half-width 1.6449 * sqrt(0.99 * 0.01 / 100 + 2.7055 / 40000) = 1.6449 * 0.012909 = 0.021233;
    # (1.003528 - 0.021233) / 1.027055 = 0.95642: the figure meets 99 %, the evidence cannot carry it
    status, reason = judged("int8", 0.99, photos=100)
    assert status == "unproven" and "95.6%" in reason and "cannot carry" in reason
    # 300 of 300 photos agree: bound 300 / 302.7055 = 0.99106 >= 0.99: passed
    assert judged("int8", 1.0, photos=300)[0] == "passed"
    # 300 crops of 10 photos, all agreeing: photos count, not crops: 10 / 12.7055 = 0.787
    status, reason = judged("int8", 1.0, photos=10, samples=300)
    assert status == "unproven" and "78.7%" in reason
    # the figure itself below the criterion: failed, however many photos
    assert judged("int8", 0.98, photos=5000)[0] == "failed"
    # never verified: failed
    assert judge_candidate(Candidate(Backend.ort, Precision.int8), None, 0.99).status == "failed"


def test_float_candidates_are_judged_by_their_numbers_not_agreement():
    # FP16 whose near-tied classes flipped (agreement 90 %) but whose logits are close: passed
    assert judged("fp16", 0.90, photos=10, cosine=0.9995, rel=0.01)[0] == "passed"
    assert judged("fp16", 1.0, cosine=0.998)[0] == "failed"  # cosine 0.998 < 0.999
    assert judged("fp16", 1.0, rel=0.06)[0] == "failed"  # 6 % of the largest logit > 5 %
    # strict FP32 must reproduce PyTorch: 1e-4 relative passes, 3e-4 does not (> 2e-4), whatever its agreement
    assert judged("fp32", 0.5, rel=1e-4)[0] == "passed"
    status, reason = judged("fp32", 1.0, rel=3e-4)
    assert status == "failed" and "3.0e-04" in reason
    assert judged("fp32", 1.0, rel=1e-3, cosine=0.99999, tf32=True)[0] == "passed"  # TF32 is judged as reduced float


def test_unproven_ships_only_when_asked_and_the_ship_line_says_so():
    unproven_int8 = m("openvino", "int8", 5.0, 0.99, photos=100)
    measured = [m("ort", "fp16", 8.5), unproven_int8, m("ort", "int8", 4.0, 0.95, photos=100)]
    d = choose_ship(measured, 0.99)
    assert d.ship == "ort-fp16" and not d.unproven
    held = d.verdict("openvino-int8")
    assert held.status == "unproven" and held.judged == "unproven" and "--ship-unproven" in held.note and held.behind_ms == pytest.approx(-3.5)
    assert d.verdict("ort-int8").status == "failed"  # 95 % is below 99 %: never shipped, asked or not
    asked = choose_ship(measured, 0.99, ship_unproven=True)
    assert asked.ship == "openvino-int8" and asked.unproven and asked.why.startswith("UNPROVEN, shipped because --ship-unproven")
    assert "fastest candidate that passed its judge or could not be proven by it: p50 5.00 ms" in asked.why  # not "passed" alone
    assert "fastest candidate that passed its judge: p50 8.50 ms" in d.why
    assert asked.verdict("openvino-int8").status == "shipped" and asked.verdict("ort-int8").status == "failed"
    # asked, but a proven candidate within noise of an unproven one ships first
    assert choose_ship([m("ort", "int8", 4.95, 0.99, photos=100), m("ort", "fp16", 5.0)], 0.99, ship_unproven=True).ship == "ort-fp16"
    # only unproven candidates and not asked: nothing ships, and the reason names the option
    none = choose_ship([unproven_int8], 0.99)
    assert none.ship is None and "unproven: openvino-int8" in none.why and "--ship-unproven" in none.why


def test_bf16_is_judged_as_reduced_float_and_ranks_between_fp16_and_int8():
    # an FP32 model computed in bf16: its logits' numbers, not strict FP32's tolerance (1e-3 relative passes as bf16 only)
    assert judged("fp32", 1.0, rel=1e-3, cosine=0.99999, inference_precision="bf16")[0] == "passed"
    assert judged("fp32", 1.0, rel=1e-3, cosine=0.99999)[0] == "failed"
    assert judged("fp32", 1.0, rel=0.06, inference_precision="bf16")[0] == "failed"
    # fidelity: FP16's 11-bit significand before bf16's 8, bf16 before INT8; a tie within noise goes that way
    assert choose_ship([m("openvino", "fp32", 5.0, inference_precision="bf16"), m("openvino", "fp16", 5.05)], 0.99).ship == "openvino-fp16"
    assert choose_ship([m("openvino", "int8", 4.95), m("openvino", "fp32", 5.0, inference_precision="bf16")], 0.99).ship == "openvino-fp32-bf16"
    # a peer quantizer's INT8 is INT8 to the judge: the same bound over photos
    assert judged("int8", 1.0, photos=10, quantizer="nncf")[0] == "unproven" and judged("int8", 1.0, quantizer="nncf")[0] == "passed"


def test_the_ship_line_says_why_a_faster_int8_was_not_shipped():
    # make run's case: INT8 ran faster, agreed on every one of 10 photos, but 10 photos cannot carry 99 %
    d = choose_ship([m("ort", "fp32", 9.0), m("openvino", "int8", 5.0, photos=10), m("openvino", "int8", 4.0, 0.95, photos=10, quantizer="nncf")],
                    0.99)
    assert d.ship == "ort-fp32"
    faster = d.why.split("faster but not shipped: ")[1]
    assert faster.startswith("openvino-int8-nncf at 4.00 ms (failed: ") and "openvino-int8 at 5.00 ms (unproven: " in faster
    assert "95% lower bound 78.7% < 99.0%: the evidence cannot carry the claim" in faster
    # nothing faster was held back: no such clause
    assert "faster but not shipped" not in choose_ship([m("ort", "fp32", 3.0), m("ort", "int8", 5.0, photos=10)], 0.99).why


# ---- the decision ----------------------------------------------------------------------------------------------------

def test_fastest_judged_candidate_ships_and_losers_are_named_with_their_loss():
    measured = [m("ort", "fp32", 15.0), m("ort", "int8", 6.0), m("openvino", "fp32", 14.0), m("openvino", "int8", 5.0)]
    d = choose_ship(measured, 0.99)
    assert d.ship == d.fastest == "openvino-int8" and "5.00 ms" in d.why
    ort_int8 = d.verdict("ort-int8")
    assert ort_int8.status == "slower" and ort_int8.behind_ms == pytest.approx(1.0) and ort_int8.behind == pytest.approx(0.2)
    assert "+1.00 ms (+20.0%) against openvino-int8" in ort_int8.note
    assert d.verdict("ort-fp32").behind == pytest.approx(2.0)
    assert d.verdict("openvino-int8").status == "shipped"
    assert [v.name for v in d.verdicts] == [x.name for x in measured]  # one verdict per candidate, in the plan's order


def test_a_faster_candidate_failing_its_judge_does_not_ship():
    # openvino-int8 is fastest but agrees with PyTorch on 97 % only; ort-fp16 was not built (its judge against its ONNX)
    measured = [m("ort", "fp32", 15.0), m("ort", "int8", 6.0), m("openvino", "int8", 4.0, agreement=0.97),
                m("ort", "fp16", None, None, failure="model.fp16.ort.onnx: logits differ (mean cosine 0.91 < 0.99)")]
    d = choose_ship(measured, 0.99)
    assert d.ship == "ort-int8"
    failed = d.verdict("openvino-int8")
    assert failed.status == "failed" and "97.0%" in failed.note and failed.behind_ms == pytest.approx(-2.0)  # faster, yet not shipped
    assert d.verdict("ort-fp16").status == "failed" and "cosine 0.91" in d.verdict("ort-fp16").note
    # the guard is inclusive on the bound: 268 of 268 photos clear 99 % (268 / 270.7055 = 0.99001), 267 of 267 do not
    assert choose_ship([m("ort", "fp32", 15.0), m("openvino", "int8", 4.0, photos=268)], 0.99).ship == "openvino-int8"
    assert choose_ship([m("ort", "fp32", 15.0), m("openvino", "int8", 4.0, photos=267)], 0.99).ship == "ort-fp32"


def test_ties_within_noise_go_to_the_more_faithful_candidate():
    # INT8 is 2 % faster than FP32: inside the noise, so FP32 (no quantization error) ships, and the report says why
    d = choose_ship([m("ort", "int8", 9.8), m("ort", "fp32", 10.0)], 0.99)
    assert d.ship == "ort-fp32" and d.fastest == "ort-int8" and "tie within noise" in d.why
    tie = d.verdict("ort-int8")
    assert tie.status == "tie" and tie.behind == pytest.approx(-0.02)
    # just outside the noise, the faster one ships
    assert choose_ship([m("ort", "int8", 10.0 / (1 + NOISE) - 0.01), m("ort", "fp32", 10.0)], 0.99).ship == "ort-int8"
    # equal precision and time: the preset's order (the first backend listed) decides, whatever the p50 order
    assert choose_ship([m("ort", "int8", 5.0), m("openvino", "int8", 4.99)], 0.99).ship == "ort-int8"
    # fidelity on the GPU: strict FP32 before TF32 before FP16; a dynamic batch before a fixed-shape one
    gpu = [m("ort", "fp16", 1.00), m("ort", "fp32", 1.01, tf32=True), m("ort", "fp16", 0.99, fixed_batch=1)]
    assert choose_ship(gpu, 0.99).ship == "ort-fp32-tf32"
    assert choose_ship([m("ort", "fp16", 1.0, fixed_batch=1), m("ort", "fp16", 1.0)], 0.99).ship == "ort-fp16"
    assert choose_ship([m("ort", "fp16", 0.5, fixed_batch=1), m("ort", "fp16", 1.0)], 0.99).ship == "ort-fp16-b1"


def test_nothing_passes_nothing_ships():
    d = choose_ship([m("ort", "fp32", 15.0, rel=1e-3), m("ort", "int8", None, None, failure="not built")], 0.99)
    assert d.ship is None and d.fastest is None and "no candidate passed its judge" in d.why
    assert {v.status for v in d.verdicts} == {"failed"}
    assert choose_ship([], 0.99).ship is None
    # built and judged but not measured at the deciding batch (a fixed-shape artifact at batch 8): not shipped
    d = choose_ship([m("ort", "fp16", None, fixed_batch=1), m("ort", "fp32", 3.0)], 0.99)
    assert d.ship == "ort-fp32" and d.verdict("ort-fp16-b1").status == "not measured"


# ---- the plan ----------------------------------------------------------------------------------------------------

def test_cpu_plan_is_each_installed_backend_times_each_precision():
    cpu = get_target("cpu")
    assert cpu.backends == ("ort", "openvino") and cpu.backend == "ort"
    plan = plan_candidates(cpu, ALL, {Backend.ort: None, Backend.openvino: None}, CPU_HERE)
    assert [c.name for c in plan.candidates] == ["ort-fp32", "ort-fp16", "ort-int8", "openvino-fp32", "openvino-fp16", "openvino-int8"]
    assert not plan.skipped and all(quant_target(cpu, c) is QuantTarget.cpu for c in plan.candidates)
    # a missing backend is skipped with its install hint, the others stay
    plan = plan_candidates(cpu, (Precision.fp32, Precision.int8), {Backend.ort: None, Backend.openvino: "pip install 'edge-inception[openvino]'"},
                           CPU_HERE)
    assert [c.name for c in plan.candidates] == ["ort-fp32", "ort-int8"]
    assert [(s.name, s.why) for s in plan.skipped] == [("openvino", "pip install 'edge-inception[openvino]'")]
    # a backend the availability map does not name counts as missing; --backend narrows the list
    assert [c.name for c in plan_candidates(cpu, ALL, {Backend.ort: None}, CPU_HERE).candidates] == ["ort-fp32", "ort-fp16", "ort-int8"]
    only = plan_candidates(cpu, (Precision.int8,), {Backend.ort: None, Backend.openvino: None}, CPU_HERE, backends=[Backend.openvino])
    assert [c.name for c in only.candidates] == ["openvino-int8"]
    # this machine (make setup installs the openvino extra): both backends really report themselves usable
    assert missing_backends(cpu) == {Backend.ort: None, Backend.openvino: None}


AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})  # an older EPYC (Zen 2)
VNNI = AVX2_ONLY | {"avx512f", "avx512_vnni"}  # Cascade Lake
VNNI_BF16 = VNNI | {"avx512_bf16"}  # Cooper Lake, Zen 4 (this project's EPYC)
AMX = VNNI_BF16 | {"amx_tile", "amx_int8", "amx_bf16"}  # Sapphire Rapids


def test_which_candidates_apply_to_which_cpu_flags():
    """Hand-worked flag sets: bf16 only where the CPU computes it natively; the ISA column names the flags each candidate's
    arithmetic can use."""
    assert cpu_float_precisions(AVX2_ONLY) == () and cpu_float_precisions(VNNI) == ()
    assert cpu_float_precisions(VNNI_BF16) == ("bf16",) and cpu_float_precisions(AMX) == ("bf16",)
    assert cpu_float_precisions({"amx_bf16"}) == ("bf16",)  # AMX alone is enough
    int8, bf16, fp32 = Candidate(Backend.ort, Precision.int8), Candidate(Backend.openvino, Precision.fp32, inference_precision="bf16"), Candidate(
        Backend.ort, Precision.fp32)
    assert isa_used(int8, AVX2_ONLY) == ["avx2"] and isa_used(int8, AMX) == ["amx_int8", "avx2", "avx512_vnni", "avx512f"]
    assert isa_used(bf16, VNNI_BF16) == ["avx512_bf16"] and isa_used(bf16, AMX) == ["amx_bf16", "avx512_bf16"] and isa_used(bf16, VNNI) == []
    assert isa_used(fp32, AVX2_ONLY) == ["avx2", "fma"]
    cpu, gpu = get_target("cpu"), get_target("gpu")
    here = {Backend.ort: None, Backend.openvino: None}
    # the extras per backend, from the registry: OpenVINO takes bf16 (on such a CPU) and NNCF; ONNX Runtime neither
    assert backend_extras(cpu, AVX2_ONLY)[Backend.openvino].inference_precisions == ()
    assert backend_extras(cpu, AMX)[Backend.openvino].inference_precisions == ("bf16",)
    assert backend_extras(cpu, AMX)[Backend.ort] == BackendExtras()
    assert backend_extras(cpu, AVX2_ONLY)[Backend.openvino].quantizers == ("nncf",)  # NNCF is in the [openvino] extra, installed here
    assert all(e.inference_precisions == () for e in backend_extras(gpu, AMX).values())  # a GPU target: the host CPU's bf16 is not it
    # the plan: the extras beside their backend's own candidates, only at the precisions asked for
    plan = plan_candidates(cpu, ALL, here, CPU_HERE, extras=backend_extras(cpu, AMX))
    assert [c.name for c in plan.candidates] == ["ort-fp32", "ort-fp16", "ort-int8", "openvino-fp32", "openvino-fp32-bf16", "openvino-fp16",
                                                 "openvino-int8", "openvino-int8-nncf"]
    assert [c.name for c in plan_candidates(cpu, ALL, here, CPU_HERE, extras=backend_extras(cpu, AVX2_ONLY)).candidates][3:] == [
        "openvino-fp32", "openvino-fp16", "openvino-int8", "openvino-int8-nncf"]  # an AVX2-only CPU: no bf16, everything else as before
    fp32_only = plan_candidates(cpu, (Precision.fp32,), here, CPU_HERE, extras=backend_extras(cpu, AMX))
    assert [c.name for c in fp32_only.candidates] == ["ort-fp32", "openvino-fp32", "openvino-fp32-bf16"]
    assert "inference precision bf16" in fp32_only.candidates[2].runtime and all(quant_target(cpu, c) is QuantTarget.cpu for c in plan.candidates)


def test_gpu_plan_adds_tf32_and_cuda_graph_variants_and_respects_the_runtime_choice():
    gpu = get_target("gpu")
    no_trt = Availability(NO_TRT, "no TensorRT libraries", None)
    plan = plan_candidates(gpu, ALL, {Backend.tensorrt: NO_TRT, Backend.ort: None}, no_trt)
    assert [c.name for c in plan.candidates] == ["ort-fp32", "ort-fp32-b1", "ort-fp32-tf32", "ort-fp32-tf32-b1", "ort-fp16", "ort-fp16-b1",
                                                 "ort-int8", "ort-int8-b1"]
    assert all(c.providers == (CUDA,) for c in plan.candidates)
    assert [(s.name, s.why) for s in plan.skipped] == [("tensorrt", NO_TRT)]
    assert {quant_target(gpu, c) for c in plan.candidates} == {QuantTarget.gpu}
    # ONNX Runtime's TensorRT provider loads: reduced precision and TF32 use it, strict FP32 cannot (TF32 cannot be
    # turned off there), and INT8 then takes TensorRT's scheme
    plan = plan_candidates(gpu, ALL, {Backend.tensorrt: NO_TRT, Backend.ort: None}, Availability(NO_TRT, None, None))
    by = {c.name: c for c in plan.candidates}
    assert by["ort-fp32"].providers == (CUDA,) and by["ort-fp32-tf32"].providers == (TENSORRT, CUDA)
    assert quant_target(gpu, by["ort-int8"]) is QuantTarget.tensorrt
    # native TensorRT loads: it is a candidate (first, as the preset lists it) beside ONNX Runtime, without graph variants
    plan = plan_candidates(gpu, (Precision.fp16,), {Backend.tensorrt: None, Backend.ort: None}, Availability(None, "x", None))
    assert [c.name for c in plan.candidates] == ["tensorrt-fp16", "ort-fp16", "ort-fp16-b1"]
    # no GPU runtime at all: every ONNX Runtime candidate is skipped with the reason, none planned
    none = Availability(NO_TRT, "x", "this onnxruntime has no CUDAExecutionProvider")
    plan = plan_candidates(gpu, (Precision.fp32,), {Backend.tensorrt: NO_TRT, Backend.ort: None}, none)
    assert not plan.candidates and any("CUDAExecutionProvider" in s.why for s in plan.skipped)
    # a Jetson Nano runs no INT8: not planned, and said so
    nano = plan_candidates(get_target("jetson-nano"), ALL, {Backend.tensorrt: None, Backend.ort: None}, Availability(None, "x", None))
    assert not any(c.precision is Precision.int8 for c in nano.candidates) and any("int8" in s.why for s in nano.skipped)


def test_presets_name_one_backend_or_a_list(tmp_path):
    common = 'description = "x"\ndevice = "cpu"\ndefault_precision = "fp32"\nprecisions = ["fp32"]\n'
    (tmp_path / "one.toml").write_text('name = "one"\nbackend = "ort"\n' + common)
    (tmp_path / "list.toml").write_text('name = "list"\nbackends = ["openvino", "ort"]\n' + common)
    (tmp_path / "bad.toml").write_text('name = "bad"\nbackend = "ort"\nbackends = ["openvino"]\n' + common)
    (tmp_path / "empty.toml").write_text('name = "empty"\nbackends = []\n' + common)
    one, listed = parse_target(tmp_path / "one.toml"), parse_target(tmp_path / "list.toml")
    assert (one.backend, one.backends) == ("ort", ("ort",))
    assert (listed.backend, listed.backends) == ("openvino", ("openvino", "ort"))  # the first listed is the preferred one
    plan = plan_candidates(listed, (Precision.fp32,), {Backend.ort: None, Backend.openvino: None}, CPU_HERE)
    assert [c.name for c in plan.candidates] == ["openvino-fp32", "ort-fp32"]
    with pytest.raises(TargetError, match="must include the backend"):
        parse_target(tmp_path / "bad.toml")
    with pytest.raises(TargetError, match="'backends' must be a non-empty list"):
        parse_target(tmp_path / "empty.toml")


# ---- the pipeline with two backends ----------------------------------------------------------------------------------

def test_pipeline_builds_measures_and_ships_the_decision_over_two_backends(tmp_path):
    """The whole pipeline on the cpu preset (ort + openvino) at 64 px with seeded weights: kept small, since what is
    checked is that every candidate is built, judged, measured in one run, and that the report is the decision."""
    from typer.testing import CliRunner

    from edge_inception.cli import app

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["pipeline", "--image-size", "64", "--precisions", "fp32,fp16", "--batch", "1", "--iterations", "3",
                                 "--rounds", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    from edge_inception.evaluate.cpu import cpu_info

    flags = cpu_info().flags  # OpenVINO's bf16 inference precision is a candidate on a CPU with AVX-512 BF16 or AMX only
    bf16 = ["openvino-fp32-bf16"] if cpu_float_precisions(flags) else []
    assert [c["name"] for c in report["candidates"]] == ["ort-fp32", "ort-fp16", "openvino-fp32", *bf16, "openvino-fp16"]
    assert report["decision_batch"] == 1 and not report["skipped"]
    # which ISA each candidate could use (CPU flags by its arithmetic), and what OpenVINO says it computes in
    rows = {c["name"]: c for c in report["candidates"]}
    assert all(c["isa"] == isa_used(Candidate(Backend(c["backend"]), Precision(c["precision"]), inference_precision=c["inference_precision"] or ""),
                                     flags) for c in report["candidates"])
    assert rows["openvino-fp32"]["runtime_precision"] == "f32" and rows["ort-fp32"]["runtime_precision"] is None
    if bf16:
        assert rows["openvino-fp32-bf16"]["runtime_precision"] == "bf16" and rows["openvino-fp32-bf16"]["isa"]

    # every candidate was built for its backend, verified against PyTorch, and measured in the one benchmark run
    bench = json.loads((out / "bench.json").read_text())
    p50 = {Path(row["path"]).name: row["latency_ms"]["p50"] for row in bench["results"] if not row["baseline"]}
    assert len(p50) == len(report["candidates"])
    for c in report["candidates"]:
        art = out / c["artifact"]
        manifest = Path(str(art) + ".manifest.json")
        assert art.is_file() and json.loads(manifest.read_text())["backend"] == c["backend"]
        assert c["p50_ms"] == {"1": p50[art.name]}
        assert c["agreement"] == report["verification_vs_pytorch"][c["name"]]["top1_agreement"]

    # the shipped artifact is the decision on those measurements, and every other candidate says how it lost
    ver = report["verification_vs_pytorch"]
    measured = [Measured(Candidate(Backend(c["backend"]), Precision(c["precision"]), inference_precision=c["inference_precision"] or ""),
                         c["p50_ms"]["1"], Evidence(c["agreement"], ver[c["name"]]["samples"], report["verification_photos"],
                                                    ver[c["name"]]["mean_cosine"], ver[c["name"]]["max_rel_error"]))
                for c in report["candidates"]]
    decision = choose_ship(measured, 0.99)
    assert decision.ship is not None
    assert report["ship"]["candidate"] == decision.ship and report["ship"]["why"] == decision.why
    assert report["ship"]["artifact"] == next(c["artifact"] for c in report["candidates"] if c["name"] == decision.ship)
    md = (out / "report.md").read_text()
    assert f"**ship: `{report['ship']['artifact']}`** ({decision.ship})" in md and "## Candidates" in md
    for c in report["candidates"]:
        v = decision.verdict(c["name"])
        assert c["status"] == v.status
        row = next(line for line in md.splitlines() if line.startswith(f"| {c['name']} |"))
        if v.status in ("slower", "tie"):  # named, with its loss in milliseconds and percent against the shipped one
            assert f"{v.behind_ms:+.2f} ms ({v.behind:+.1%}) against {decision.ship}" in row
    assert f"ship: {report['ship']['artifact']} ({decision.ship})" in r.output


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    """GoogLeNet at 64 px with seeded weights: what the pipeline's candidates are measured on, kept small."""
    from edge_inception.convert.export import export_model

    return export_model(None, tmp_path_factory.mktemp("small") / "small.onnx", image_size=64).path


def test_fixed_batch_variant_is_measured_at_its_own_batch_only(small_onnx, tmp_path):
    """The GPU's fixed-shape candidate, made on the CPU: same weights, batch fixed to 1, built and verified; one bench run
    with a dynamic artifact at batch 1 and 2 measures it at batch 1 only (plain bench still refuses other sizes)."""
    from edge_inception.convert.graph_ops import with_fixed_batch
    from edge_inception.engines.build import build
    from edge_inception.errors import EdgeInceptionError
    from edge_inception.evaluate.bench import BenchConfig, run_bench
    from edge_inception.onnx_file import onnx_facts

    b1 = with_fixed_batch(small_onnx, tmp_path / "small.b1.onnx", 1)
    assert onnx_facts(b1).fixed_batch == 1 and onnx_facts(small_onnx).fixed_batch is None
    fixed = build(b1, "cpu", output_dir=tmp_path / "art").artifact
    dynamic = build(small_onnx, "cpu", output_dir=tmp_path / "art").artifact
    cfg = BenchConfig(batches=(1, 2), iterations=2, rounds=1, warmup=1, baselines=(), fixed_at_own_batch=True)
    report = run_bench([str(fixed), str(dynamic)], cfg)
    assert sorted((r.engine, r.batch) for r in report.results) == [("ort-fp32", 1), ("ort-fp32", 2), ("ort-fp32-b1", 1)]
    assert {r.path for r in report.results} == {str(fixed), str(dynamic)}
    with pytest.raises(EdgeInceptionError, match="takes batches of 1 only"):
        run_bench([str(fixed)], BenchConfig(batches=(1, 2), iterations=2, rounds=1, baselines=()))


def test_build_backend_auto_keeps_the_fastest_judged_candidate(small_onnx, tmp_path):
    """`build --backend auto`: both CPU backends built aside and measured in one run; only the decision's artifact is
    built into the output folder, beside candidates.json/.md naming the loser and its loss."""
    from typer.testing import CliRunner

    from edge_inception.cli import app
    from edge_inception.engines.registry import artifact_info, resolve_artifact

    model = small_onnx
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["build", str(model), "--target", "cpu", "--backend", "auto", "--iterations", "3", "--rounds", "1",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "candidates.json").read_text())
    from edge_inception.evaluate.cpu import cpu_info

    bf16 = ["openvino-fp32-bf16"] if cpu_float_precisions(cpu_info().flags) else []
    assert [c["name"] for c in data["candidates"]] == ["ort-fp32", "openvino-fp32", *bf16]
    assert data["ship"]["candidate"] is not None
    shipped_row = next(c for c in data["candidates"] if c["name"] == data["ship"]["candidate"])
    assert shipped_row["status"] == "shipped" and shipped_row["judged"] == "passed"  # what shipped passed its judge
    assert all(c["judged"] == "passed" or c["status"] != "shipped" for c in data["candidates"])
    decision = choose_ship([Measured(Candidate(Backend(c["backend"]), Precision(c["precision"]), inference_precision=c["inference_precision"] or ""),
                                     c["p50_ms"]["1"], Evidence(1.0, 1, 1, 1.0, 0.0)) for c in data["candidates"]], 0.99)  # exact: time decides
    shipped = resolve_artifact(out)  # the folder holds exactly one artifact: the shipped one
    assert shipped.name == data["ship"]["artifact"] and artifact_info(shipped).backend == decision.ship.split("-")[0]
    loser = next(v for v in decision.verdicts if v.status != "shipped")
    assert f"| {loser.name} |" in (out / "candidates.md").read_text() and f"ship: {shipped.name} ({decision.ship})" in r.output
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the candidates' staging folder is gone


@pytest.fixture(scope="module")
def three_photos(tmp_path_factory) -> Path:
    import shutil

    from edge_inception.data.images import bundled_photos

    out = tmp_path_factory.mktemp("three")
    for p in bundled_photos()[:3]:
        shutil.copyfile(p, out / p.name)
    return out


def test_bf16_and_nncf_candidates_are_real_openvino_artifacts(small_onnx, three_photos, tmp_path):
    """OpenVINO really computes the bf16 candidate in bf16 where the CPU has it (it says so when asked), and NNCF really
    makes the INT8 IR from the FP32 model on the calibration photos; both verified against the FP32 ONNX like any build."""
    pytest.importorskip("nncf")
    from edge_inception.engines.build import build
    from edge_inception.errors import BackendUnavailableError, EdgeInceptionError
    from edge_inception.evaluate.bench import describe
    from edge_inception.evaluate.cpu import cpu_info

    native = cpu_float_precisions(cpu_info().flags)
    b = build(small_onnx, "cpu", backend="openvino", output_dir=tmp_path, name="m.fp32-bf16", inference_precision="bf16")
    assert b.manifest.precision == "fp32" and b.manifest.options["inference_precision"] == "bf16"
    assert b.manifest.options["runtime_inference_precision"] == ("bf16" if native else b.manifest.options["runtime_inference_precision"])
    assert ("BF16" in b.manifest.options["cpu_capabilities"].split(",")) == bool(native)  # OpenVINO's own view agrees with the flags
    assert b.parity.mean_cosine >= 0.999 and describe(b.artifact).name == "openvino-fp32-bf16"
    strict = build(small_onnx, "cpu", backend="openvino", output_dir=tmp_path, name="m.fp32")
    assert strict.manifest.options["runtime_inference_precision"] == "f32" and strict.parity.max_rel_error <= 1e-5

    q = build(small_onnx, "cpu", backend="openvino", output_dir=tmp_path, name="m.int8-nncf", quantizer="nncf", calib=three_photos, calib_size=6)
    assert q.manifest.precision == "int8" and q.manifest.options["quantizer"] == "nncf" and "nncf" in q.manifest.libraries
    assert str(three_photos) in q.manifest.options["calibration"] and describe(q.artifact).name == "openvino-int8-nncf"
    assert q.parity.mean_cosine >= 0.99  # INT8's build check against its FP32 source (the judge proper is agreement over photos)
    # what a backend does not offer is refused in one line, before anything is written
    with pytest.raises(BackendUnavailableError, match="ort has no quantizer 'nncf'"):
        build(small_onnx, "cpu", backend="ort", output_dir=tmp_path / "x", quantizer="nncf")
    with pytest.raises(EdgeInceptionError, match="ort does not take inference precision 'bf16'"):
        build(small_onnx, "cpu", backend="ort", output_dir=tmp_path / "x", inference_precision="bf16")
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


def test_nncf_evidence_is_cross_fitted_by_photo(small_onnx, tmp_path):
    """The NNCF candidate's agreement comes from photos its calibration did not see: each fold's artifact calibrated on the
    other photos, the judged crops pooled, the bound counting distinct judged photos (the folds quantize uses)."""
    pytest.importorskip("nncf")
    from edge_inception.convert.calibration import select_images
    from edge_inception.engines.peers import crossfit_evidence

    sets = select_images(None, None, 6)
    assert sets.folds and all(not ({s.path for s in f.calibration.samples} & {s.path for s in f.verdict.samples}) for f in sets.folds)
    e = crossfit_evidence(small_onnx, Backend.openvino, "nncf", None, 6, tmp_path)
    assert e.samples == len(sets.verdict.samples) and e.photos == sets.verdict.images and "cross-fitted" in e.reference
    assert 0.0 <= e.agreement <= 1.0 and e.mean_cosine > 0.9
    assert sorted(p.name for p in tmp_path.glob("nncf.fold*.xml")) == [f"nncf.fold{i}.xml" for i in range(len(sets.folds))]
    from edge_inception.convert import calibration

    assert not calibration._DECODED.keys()  # the photos decoded for the folds are let go, as at a quantization's end


def test_a_tie_ship_line_names_what_broke_the_tie_not_always_fidelity():
    # a proven INT8 tied with a faster unproven INT8 (same fidelity): shipped because proven, not "more faithful"
    d = choose_ship([m("openvino", "int8", 4.95, 0.99, photos=100), m("ort", "int8", 5.0)], 0.99, ship_unproven=True)
    assert d.ship == "ort-int8" and "and proven" in d.why and "more faithful" not in d.why
    # two FP16 within noise: the earlier in the preset's order ships, as faithful as the faster one
    d = choose_ship([m("ort", "fp16", 5.0), m("openvino", "fp16", 4.95)], 0.99)
    assert d.ship == "ort-fp16" and "earlier in the preset's backend order" in d.why and "more faithful" not in d.why
    # a real fidelity win keeps its wording
    d = choose_ship([m("ort", "int8", 4.95), m("ort", "fp16", 5.0)], 0.99)
    assert d.ship == "ort-fp16" and "and more faithful" in d.why


def test_the_fastest_ships_line_calls_a_tied_candidate_less_faithful_only_when_it_is():
    d = choose_ship([m("ort", "fp16", 4.95), m("openvino", "fp16", 5.0)], 0.99)
    assert d.ship == "ort-fp16" and "less faithful" not in d.why
    assert "tied within 3% with as faithful openvino-fp16 (later in the preset's backend order)" in d.why
    d = choose_ship([m("ort", "int8", 4.95), m("openvino", "int8", 5.0, 0.99, photos=100)], 0.99, ship_unproven=True)
    assert d.ship == "ort-int8" and "tied within 3% with unproven openvino-int8" in d.why and "less faithful" not in d.why
    d = choose_ship([m("ort", "fp16", 4.95), m("ort", "int8", 5.0)], 0.99)
    assert d.ship == "ort-fp16" and "tied within 3% with less faithful ort-int8" in d.why
