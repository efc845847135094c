"""`make bench`: re-record every results file in one command, sized to finish in under 20 minutes on 2 cores.

    python benchmarks/record_all.py [--out benchmarks/results] [--only suite,stream,...] [--smoke] [--max-load 0.5]

It first waits (up to 10 min) for the 1-minute load average to fall below --max-load; then each script runs in its own
process, in turn, and starts once the rest of the machine has used under a tenth of a core for 5 s (the load average
would mostly remember the previous script: benchmarks/_record.py). Each writes its own results with the CPU's name and
ISA flags and every round's load, and says whether it may be quoted. The budget below is each script's share of the 20
minutes on a quiet 2-core machine (its settings are chosen to fit it); a script still running at twice its budget is
stopped and reported as such. Shared inputs are made once, first, by the prepare step (only those the wanted steps
take): the demo net trained briefly (its checkpoint, FP32 ONNX and INT8 CPU artifact: stream, int8-verdict, suite) and
seeded GoogLeNet at 224 px (its FP32 ONNX, its INT8 calibrated min-max on 100 crops of the bundled photos, and that INT8
built for the cpu target with ONNX Runtime: suite, bench-agreement, serve), so that no step makes them again.

--smoke: tiny settings, no waiting, results into a scratch folder (never benchmarks/results): a check that every script
still runs, not figures. Writes record_all.md (each script: seconds, exit status, quotable) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import SEQUENCE_ENV, Record  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int  # its share of the 20 minutes on a quiet 2-core machine
    args: tuple[str, ...]  # the full settings
    smoke: tuple[str, ...]  # tiny settings: does it still run
    results: str  # the folder under --out it writes


# Placeholders, made by prepare: {model}: the demo net's FP32 ONNX; {artifact}: its INT8 CPU artifact; {demo_checkpoint}: its
# checkpoint (.pth, with the training sidecar .json beside it); {googlenet}: seeded GoogLeNet at 224 px, FP32 ONNX;
# {googlenet_int8}: its INT8 (min-max on 100 crops of the bundled photos, as the suite made its own, the agreement criterion at
# 1 % as bench_agreement.py and serve_goals.py quantize, so that it is always written); {googlenet_artifact}: that INT8 built
# for the cpu target (ONNX Runtime, as serve_goals.py builds it). {out}: the step's results folder.
# bench-agreement and serve made theirs on 14 crops: their timings do not depend on the calibration. The suite's INT8 row
# also asks >= 99 % agreement with FP32 on the seeded net, whose answers are near ties: its own 100-crop files agreed
# 100 % in the three CPUs' records, the shared 14-crop and 100-crop files 98.0 % in make bench on the AVX2 EPYC
# (2026-12-07); that row's agreement says nothing about INT8 (the INT8 verdict's benchmark judges a trained net).
# --smoke: bench-agreement keeps making its own small net (64 px, 10 classes: the shared one is 224 px, 1000 classes).
STEPS = (
    Step("prepare", 130, (), (), ""),  # the demo net (200 steps at 64 px) and its INT8 artifact; seeded GoogLeNet 224, its INT8 and artifact
    Step("suite", 170, ("run_suite.py", "--fp32", "{googlenet}", "--int8", "{googlenet_int8}", "--demo-checkpoint", "{demo_checkpoint}",
                        "--iterations", "20", "--rounds", "2", "--out", "{out}"),
         ("run_suite.py", "--fp32", "{googlenet}", "--int8", "{googlenet_int8}", "--demo-checkpoint", "{demo_checkpoint}",
          "--iterations", "2", "--rounds", "1", "--batch", "1", "--rerun-disturbed", "0", "--no-wait", "--out", "{out}"), ""),
    Step("candidates", 340, ("candidates_goals.py", "cpu", "--iterations", "20", "--rounds", "2", "--out", "{out}"),
         ("candidates_goals.py", "cpu", "--iterations", "2", "--rounds", "1", "--no-wait", "--out", "{out}"), "candidates"),
    Step("bench-agreement", 120, ("bench_agreement.py", "--model", "{googlenet}", "--int8", "{googlenet_int8}", "--rounds", "2",
                                  "--iterations", "20", "--out", "{out}"),
         ("bench_agreement.py", "--image-size", "64", "--num-classes", "10", "--rounds", "1", "--iterations", "2", "--warmup", "1",
          "--batch", "1,2", "--rerun-disturbed", "0", "--no-wait", "--out", "{out}"), "bench-agreement"),
    Step("stream", 120, ("stream_goals.py", "{artifact}", "--agreement-images", "300", "--jpegs", "24", "--video-frames", "150", "--out", "{out}"),
         ("stream_goals.py", "{artifact}", "--agreement-images", "4", "--jpegs", "2", "--video-frames", "8", "--no-wait", "--out", "{out}"),
         "stream"),
    Step("serve", 50, ("serve_goals.py", "--artifact", "{googlenet_artifact}", "--min-duration-ms", "5000", "--out", "{out}"),
         ("serve_goals.py", "--artifact", "{googlenet_artifact}", "--min-duration-ms", "500", "--clients", "4", "--no-wait", "--out", "{out}"),
         "serve"),
    Step("int8-verdict", 230, ("int8_verdict.py", "--model", "{model}", "--subsets", "5", "--out", "{out}"),
         ("int8_verdict.py", "--model", "{model}", "--subsets", "1", "--no-wait", "--out", "{out}"), "int8-verdict"),
)
# Shares from the quiet runs of this command (record_all.md under benchmarks/results, results/xeon, results/epyc-avx2),
# seconds on a 2-core AVX-512 EPYC / AVX-512 Xeon / AVX2-only EPYC, recorded while each step still made its own inputs:
# prepare 89/54/95, suite 322/292/324, candidates 287/269/387, bench-agreement 146/76/127, stream 97/94/122, serve
# 61/58/84, int8-verdict 108/165/220; 1,111/1,052/1,378 s in all. With the inputs made once by prepare and INT8
# calibration's methods calibrated together (edge_inception/convert/ort_calibrate.py), on the AVX2 EPYC (2026-12-07, two
# quiet runs; the second, with the 100-crop GoogLeNet INT8, is the record): prepare 108/120, suite 206/224, candidates
# 322/368, bench-agreement 87/101, stream 103/126, serve 48/50, int8-verdict 152/184; 1,096/1,178 s in all with the waits
# for quiet. A step is stopped at twice its share, so a slower CPU still finishes every step.
BUDGET_S = sum(s.budget_s for s in STEPS)  # 1160 s: 19.3 min, the quiet-machine waits not counted; see the README

DEMO_OUTPUTS = frozenset({"model", "artifact", "demo_checkpoint"})  # what prepare's demo part makes
GOOGLENET_OUTPUTS = frozenset({"googlenet", "googlenet_int8", "googlenet_artifact"})  # what its GoogLeNet part makes


def placeholders(settings: tuple[str, ...]) -> set[str]:
    """The prepare outputs a step's settings name (``{model}``, ``{googlenet}``, ...; ``{out}`` is the step's own)."""
    return {name for a in settings for _, name, _, _ in string.Formatter().parse(a) if name} - {"out"}


def prepare(work: Path, smoke: bool, needs: set[str] | frozenset[str] = DEMO_OUTPUTS | GOOGLENET_OUTPUTS) -> dict[str, str]:
    """The shared inputs the wanted steps take (``needs``: placeholder names), each made once with the CLI:

    - the demo net trained briefly (as the tests and int8_verdict do), exported, quantized to INT8 on its training crops,
      and built for the cpu target: what stream_goals and int8_verdict take, and the checkpoint run_suite's parts B and C
      take;
    - seeded GoogLeNet at 224 px, exported, quantized to INT8 (min-max on 100 crops of the bundled photos, the agreement
      criterion at 1 %) and built for the cpu target with ONNX Runtime
      (serve_goals' own build): what run_suite's part A, bench_agreement and serve_goals take."""
    from edge_inception.data.images import bundled_photos_dir

    cli = [PY, "-m", "edge_inception"]
    run: list[list[str]] = []
    made: dict[str, str] = {}
    if needs & DEMO_OUTPUTS:
        steps = "30" if smoke else "200"
        run += [cli + ["demo-data", "-o", str(work / "demo")],
                cli + ["train", "--data", str(work / "demo" / "train"), "--val", str(work / "demo" / "val"), "--image-size", "64",
                       "--max-steps", steps, "--batch-size", "16", "--lr", "0.03", "-o", str(work / "demo.pth")],
                cli + ["export", "-w", str(work / "demo.pth"), "-o", str(work / "demo.onnx")],
                cli + ["quantize", str(work / "demo.onnx"), "--precision", "int8", "--calib", str(work / "demo" / "train"),
                       "--calib-method", "minmax", "-o", str(work / "demo.int8.onnx")],
                cli + ["build", str(work / "demo.int8.onnx"), "--target", "cpu", "-o", str(work / "cpu")]]
        made.update(model=str(work / "demo.onnx"), demo_checkpoint=str(work / "demo.pth"))
    if needs & GOOGLENET_OUTPUTS:
        run += [cli + ["export", "-o", str(work / "googlenet.onnx")],
                cli + ["quantize", str(work / "googlenet.onnx"), "--precision", "int8", "--calib", str(bundled_photos_dir()),
                       "--calib-method", "minmax", "--criterion", "agreement", "--min-agreement", "0.01",
                       "-o", str(work / "googlenet.int8.onnx")],
                cli + ["build", str(work / "googlenet.int8.onnx"), "--target", "cpu", "--backend", "ort", "-o", str(work / "googlenet-cpu")]]
        made.update(googlenet=str(work / "googlenet.onnx"), googlenet_int8=str(work / "googlenet.int8.onnx"))
    for cmd in run:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if needs & DEMO_OUTPUTS:
        made["artifact"] = str(_artifact(work / "cpu"))
    if needs & GOOGLENET_OUTPUTS:
        made["googlenet_artifact"] = str(_artifact(work / "googlenet-cpu"))
    return made


def _artifact(folder: Path) -> Path:
    """The artifact ``build -o folder`` wrote (not its manifest)."""
    return next(p for p in sorted(folder.iterdir()) if p.suffix in (".onnx", ".xml") and not p.name.endswith(".manifest.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--only", help="comma-separated steps (" + ", ".join(s.name for s in STEPS[1:]) + ")")
    parser.add_argument("--smoke", action="store_true", help="tiny settings into a scratch folder: does every script still run")
    parser.add_argument("--max-load", type=float, default=0.5)
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else {s.name for s in STEPS}
    unknown = wanted - {s.name for s in STEPS}
    if unknown:
        parser.error(f"unknown step(s): {', '.join(sorted(unknown))}")
    out = Path(tempfile.mkdtemp(prefix="record-all-smoke-")) if args.smoke else args.out
    rows = []
    t_all = time.monotonic()
    if not args.smoke:
        start = Record(max_load=args.max_load)
        rows.append({"step": "wait for load < " + f"{args.max_load:g}", "seconds": start.wait_for_quiet(), "rc": 0, "budget_s": "-"})
        os.environ[SEQUENCE_ENV] = str(start.load_at_start if start.load_at_start is not None else 0.0)  # every later Record reads it
    with tempfile.TemporaryDirectory(prefix="record-all-") as tmp:
        work = Path(tmp)
        shared: dict[str, str] = {}
        needs: set[str] = set().union(*(placeholders(s.smoke if args.smoke else s.args) for s in STEPS if s.name in wanted))
        for step in STEPS:
            if step.name == "prepare":
                if needs:  # some wanted step takes what prepare makes
                    t0 = time.monotonic()
                    shared = prepare(work, args.smoke, needs)
                    rows.append({"step": "prepare", "seconds": round(time.monotonic() - t0, 1), "rc": 0, "budget_s": step.budget_s})
                continue
            if step.name not in wanted:
                continue
            folder = out / step.results if step.results else out
            settings = [a.format(out=folder, **shared) for a in (step.smoke if args.smoke else step.args)]
            cmd = [PY, str(HERE / settings[0]), *settings[1:]]
            print(f"== {step.name} (budget {step.budget_s} s): {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
            t0 = time.monotonic()
            try:
                rc = subprocess.run(cmd, timeout=2 * step.budget_s if not args.smoke else None).returncode
            except subprocess.TimeoutExpired:
                rc = "timed out"
            seconds = round(time.monotonic() - t0, 1)
            rows.append({"step": step.name, "seconds": seconds, "rc": rc, "budget_s": step.budget_s,
                         "quotable": _quotable(folder)})
            print(f"== {step.name}: {seconds} s, exit {rc}", flush=True)
    total = round(time.monotonic() - t_all, 1)
    lines = ["# make bench", "", f"`python benchmarks/record_all.py {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}`: {total:.0f} s "
             f"in all (budget {BUDGET_S} s)" + (" (smoke: tiny settings, figures not meaningful)" if args.smoke else ""), "",
             "| step | seconds | budget s | exit | quotable |", "|---|---:|---:|---|---|"]
    lines += [f"| {r['step']} | {r['seconds']} | {r['budget_s']} | {r['rc']} | {r.get('quotable', '-')} |" for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "record_all.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'record_all.md'}")
    return 0 if all(r["rc"] in (0, 1) for r in rows) else 1  # 1: a script ran and reported a goal missed


def _quotable(folder: Path) -> str:
    """What the step's newest results file says of itself (record.quotable), or '-' when it wrote none."""
    files = sorted((p for p in folder.glob("*.json") if p.is_file()), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    for f in reversed(files):
        try:
            doc = json.loads(f.read_text())
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("record"), dict):
            return "yes" if doc["record"].get("quotable") else "no"
    return "-"


if __name__ == "__main__":
    raise SystemExit(main())
