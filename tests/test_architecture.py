"""The layout's rules, checked on the source, and the promises they buy: a light CLI start-up, a runtime that works
without PyTorch, a wheel that carries its presets."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .device_env import device_pythonpath
from .import_walk import PACKAGE, ROOT, imports, modules, resolve

HEAVY = {"torch", "onnx", "onnxruntime", "onnxsim", "tensorrt", "openvino", "matplotlib", "skimage", "safetensors", "av", "cv2", "ray", "scipy"}
BACKEND_MODULES = {"ort", "openvino", "tensorrt", "pytorch"}
PRESETS = {"cpu", "gpu", "jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin"}


def test_module_level_imports_are_seen_inside_try_with_and_if():
    """A guarded import at module level still runs at import: the walker must see it (a blind spot once)."""
    tree = ast.parse("import sys\ntry:\n    import torch\nexcept ImportError:\n    pass\nif sys:\n    import av\n"
                     "with open(__file__):\n    import cv2\nif TYPE_CHECKING:\n    import onnx\ndef f():\n    import openvino\n"
                     "class C:\n    import tensorrt\n")
    assert imports("edge_inception.x", tree, top_level_only=True) == {"sys", "torch", "av", "cv2", "tensorrt"}



def _stmt(code: str) -> ast.Import | ast.ImportFrom:
    node = ast.parse(code).body[0]
    assert isinstance(node, (ast.Import, ast.ImportFrom))
    return node


def test_walker_resolves_each_import_form_by_hand():
    quantize, convert = "edge_inception.convert.quantize", "edge_inception.convert"  # a module; a package (__init__.py)
    assert resolve(quantize, _stmt("import a.b, c")) == ["a.b", "c"]
    assert resolve(quantize, _stmt("from a.b import c, d")) == ["a.b", "a.b.c", "a.b.d"]
    assert resolve(quantize, _stmt("from .guard import x")) == ["edge_inception.convert.guard", "edge_inception.convert.guard.x"]
    assert resolve(quantize, _stmt("from ..vocab import A")) == ["edge_inception.vocab", "edge_inception.vocab.A"]
    assert resolve(quantize, _stmt("from .. import fileio")) == ["edge_inception", "edge_inception.fileio"]
    # in a package's __init__ "." is the package itself, ".." its parent
    assert resolve(convert, _stmt("from . import guard")) == ["edge_inception.convert", "edge_inception.convert.guard"]
    assert resolve(convert, _stmt("from .guard import x")) == ["edge_inception.convert.guard", "edge_inception.convert.guard.x"]
    assert resolve(convert, _stmt("from ..fileio import y")) == ["edge_inception.fileio", "edge_inception.fileio.y"]


def test_walker_sees_module_level_code_only_when_asked_by_hand():
    tree = ast.parse("import typing\nfrom .y import z\nif typing.TYPE_CHECKING:\n    import onnx\nelse:\n    import json\n"
                     "async def g():\n    import av\nf = lambda: __import__('x')\nfor _ in ():\n    import cv2\n"
                     "class C:\n    def m(self):\n        import ray\n")
    relative = {"edge_inception.convert.y", "edge_inception.convert.y.z"}
    assert imports("edge_inception.convert.quantize", tree, top_level_only=True) == {"typing", "json", "cv2"} | relative  # TYPE_CHECKING's else runs
    assert imports("edge_inception.convert.quantize", tree, top_level_only=False) == {"typing", "onnx", "json", "av", "cv2", "ray"} | relative
    names = modules()
    assert "edge_inception" in names and "edge_inception.convert.guard" in names and "edge_inception.convert.__init__" not in names
    assert all(isinstance(t, ast.Module) for t in names.values()) and len(names) == len(list(PACKAGE.rglob("*.py")))

def test_convert_never_imports_engines():
    for name, tree in modules().items():
        if name.startswith("edge_inception.convert"):
            bad = {i for i in imports(name, tree, top_level_only=False) if i.startswith("edge_inception.engines")}
            assert not bad, f"{name} imports {bad}"


def test_new_capabilities_import_engines_and_data_never_convert():
    """serve/ and stream/ sit beside deploy/ and use artifacts, not conversions; onnx_file (loading, metadata, the one ONNX
    Runtime session factory) is a foundation below convert/, engines/ and evaluate/ and imports none of them."""
    for name, tree in modules().items():
        used = imports(name, tree, top_level_only=False)
        if name.split(".")[1:2] in (["serve"], ["stream"]):
            assert not {i for i in used if i.startswith("edge_inception.convert")}, f"{name} imports convert/"
        if name == "edge_inception.onnx_file":
            above = ("edge_inception.convert", "edge_inception.engines", "edge_inception.evaluate", "edge_inception.deploy")
            assert not {i for i in used if i.startswith(above)}, f"onnx_file imports {used}"


def test_runner_and_manifest_know_no_backend():
    mods = modules()
    for name in ("edge_inception.engines.runner", "edge_inception.engines.manifest"):
        used = imports(name, mods[name], top_level_only=False)
        assert not {i for i in used if i.split(".")[-1] in BACKEND_MODULES | HEAVY}, name


def test_build_and_open_runner_name_no_backend():
    """Dispatch goes through the registry: no backend's name appears in build or in open_runner."""
    mods = modules()
    names = {"ort", "openvino", "tensorrt"}

    def mentions(tree: ast.AST) -> set[str]:
        found = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names}
        found |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in names}
        found |= {i for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for i in [n.module or ""] if i.split(".")[-1] in names}
        return found

    assert not mentions(mods["edge_inception.engines.build"])
    registry = mods["edge_inception.engines.registry"]
    for fn in (n for n in registry.body if isinstance(n, ast.FunctionDef)):
        assert not mentions(fn), fn.name


def test_no_heavy_import_at_module_level():
    """Only the PyTorch model itself may import torch at module level; everything else imports heavy libraries where used."""
    for name, tree in modules().items():
        heavy = {i.split(".")[0] for i in imports(name, tree, top_level_only=True)} & HEAVY
        allowed = {"torch"} if name == "edge_inception.model.googlenet" else set()
        assert heavy <= allowed, f"{name} imports {heavy - allowed} at module level"


def test_no_import_cycles():
    """No circle through any import, those inside functions included (a deferred import is still a dependency)."""
    mods = modules()
    graph = {name: {i for i in imports(name, tree, top_level_only=False) if i in mods and i != name} for name, tree in mods.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


# The floors, lowest first (the README's layout draws them): a package or top-level module imports only from its own
# floor or those below it, never from a floor above. Within a floor the packages may use each other (without a circle
# between modules: test_no_import_cycles).
FLOORS = (
    {"edge_inception", "errors", "names", "vocab", "limits", "fileio", "report"},  # the foundation: no ML library
    {"model", "data", "onnx_file"},
    {"convert", "engines", "evaluate"},
    {"deploy", "serve", "stream", "cluster", "pipeline", "autobuild", "cli_common", "cli_format"},
    {"cli", "__main__"},  # the commands, on top
)


def _unit(module: str) -> str:
    """The package or top-level module a module belongs to: edge_inception.serve.child -> serve, edge_inception.report -> report."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_package_imports_only_its_floor_or_below():
    floor = {unit: level for level, units in enumerate(FLOORS) for unit in units}
    mods = modules()
    for name, tree in mods.items():
        here = _unit(name)
        assert here in floor, f"{name}: {here} stands on no floor: add it to FLOORS and to the README's layout"
        up = {i for i in imports(name, tree, top_level_only=False) if i in mods and floor.get(_unit(i), -1) > floor[here]}
        assert not up, f"{name} (floor {floor[here]}) imports {sorted(up)} from a floor above"


def _command_modules() -> set[str]:
    return {name for name in modules() if name.startswith("edge_inception.cli.") or name == "edge_inception.cli"}


ROOT_COMMAND = "edge_inception.cli"  # the root app: it registers each area's module, and imports nothing else of them
AREAS = {"convert", "engines", "evaluate", "deploy", "pipeline", "model", "stream", "serve", "fleet"}


def test_command_modules_import_no_command_module_and_libraries_none():
    """Commands sit on top, one module per area in edge_inception/cli/: no library module imports a command module, no
    command module imports another (only the root, at module level, to register each area's ``app``); what they share
    lives in cli_common, below them."""
    commands = _command_modules()
    assert commands == {ROOT_COMMAND} | {f"{ROOT_COMMAND}.{a}" for a in AREAS}, commands
    for name, tree in modules().items():
        if name == "edge_inception.__main__":  # the entry point runs the root app
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            used = {i for i in resolve(name, node) if i in commands and i != name}
            if used:
                assert name == ROOT_COMMAND and node in tree.body, f"{name} imports the command module(s) {used}"
    library = [n for n in modules() if n not in commands and n != "edge_inception.__main__"]
    assert "edge_inception.cli_common" in library  # the shared layer is below the commands


def test_each_area_module_registers_its_commands_with_the_root():
    import typer

    from edge_inception.cli import app

    group = typer.main.get_command(app)
    expected = {"export", "simplify", "info", "flops", "quantize", "targets", "build", "predict", "eval", "bench", "profile", "bundle",
                "check", "pipeline", "train", "demo-data", "stream", "serve", "fleet"}
    assert set(group.commands) == expected, set(group.commands) ^ expected


def _run(args: list[str], *, env_extra: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_cli_start_up_loads_no_heavy_library():
    r = _run(["-c", f"import sys, edge_inception.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    help_run = _run(["-m", "edge_inception", "--help"])
    assert help_run.returncode == 0 and "pipeline" in help_run.stdout


@pytest.fixture()
def no_torch(tmp_path) -> dict[str, str]:
    """Environment for subprocesses (and their own subprocesses) in which `import torch` fails, as where it is not installed."""
    # torch, scikit-image, onnxsim and sympy unimportable (tests/device_env.py). An empty cache: demo data made earlier
    # must not hide a missing package.
    return {"PYTHONPATH": device_pythonpath(tmp_path / "blocker"), "EDGE_INCEPTION_CACHE": str(tmp_path / "empty-cache")}


def test_every_module_but_the_model_imports_without_pytorch(no_torch):
    code = ("import importlib, pkgutil, edge_inception as e\n"
            "for m in pkgutil.walk_packages(e.__path__, 'edge_inception.'):\n"
            "    if m.name not in ('edge_inception.model.googlenet', 'edge_inception.__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "print('ok')")
    r = _run(["-c", code], env_extra=no_torch)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_runtime_commands_work_without_pytorch(trained, tmp_path, no_torch):
    cli = ["-m", "edge_inception"]
    probe = _run(["-c", "import torch"], env_extra=no_torch)
    assert probe.returncode == 1 and ("ImportError" in probe.stderr or "ModuleNotFoundError" in probe.stderr)
    photo = sorted((trained.data / "val" / "cat").glob("*.png"))[0]

    def ok(*args: str) -> str:
        r = _run([*cli, *args], env_extra=no_torch)
        assert r.returncode == 0, f"{args}: {r.stderr}"
        assert "Traceback" not in r.stderr
        return r.stdout

    assert PRESETS <= {line.split()[0] for line in ok("targets").splitlines()[2:]}
    assert "opset 17" in ok("info", str(trained.onnx))
    assert json.loads(ok("flops", str(trained.onnx), "--json"))["total_macs"] > 0
    ok("build", str(trained.onnx), "--target", "cpu", "--backend", "ort", "-o", str(tmp_path / "cpu"))
    artifact = tmp_path / "cpu" / "demo.ort.onnx"
    assert "cat" in ok("predict", str(artifact), str(photo), "--top-k", "1")
    ok("eval", str(artifact), "--data", str(trained.data / "val"))
    bench = ok("bench", str(artifact), "--baseline", "ort-default", "--iterations", "3", "--rounds", "1", "--warmup", "1", "--no-peak",
               "--json", str(tmp_path / "b.json"))
    assert {r["engine"] for r in json.loads((tmp_path / "b.json").read_text())["results"]} == {"ort-fp32", "ort-default"} and bench
    ok("quantize", str(trained.onnx), "--precision", "fp16", "--calib", str(trained.data / "train"), "-o", str(tmp_path / "m.fp16.onnx"))
    # INT8 without sympy (ONNX Runtime's symbolic shape inference) and without the bundled photos' labelled crops
    q = ok("quantize", str(trained.onnx), "--precision", "int8", "--calib", str(trained.data / "train"), "--calib-size", "10",
           "--calib-method", "minmax", "--min-agreement", "0.5", "-o", str(tmp_path / "m.int8.onnx"))
    assert "criterion: top-1 agreement" in q and (tmp_path / "m.int8.onnx").is_file()

    # what needs PyTorch says which extra brings it, in one line
    r = _run([*cli, "export", "-o", str(tmp_path / "x.onnx")], env_extra=no_torch)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "pip install 'edge-inception[export]'" in r.stderr
    r = _run([*cli, "bench", str(artifact), "--baseline", "torch", "--iterations", "1", "--rounds", "1"], env_extra=no_torch)
    assert r.returncode == 1 and "edge-inception[export]" in r.stderr and "Traceback" not in r.stderr


def test_wheel_carries_the_presets(tmp_path):
    """`pip wheel .` then the installed files alone (no source tree on the path) list the six presets."""
    build = _run(["-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")])
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("edge_inception-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"edge_inception/engines/targets/{p}.toml" for p in PRESETS} <= names
    assert "edge_inception/data/imagenet_classes.tsv" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip installs: the wheel's files, unpacked
    r = _run(["-c", "import sys; sys.path.insert(0, sys.argv[1]); sys.argv[1:] = ['targets']; import edge_inception.cli as c; "
                    "assert c.__file__.startswith(sys.path[0]), c.__file__; c.main()", str(site)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert PRESETS <= {line.split()[0] for line in r.stdout.splitlines()[2:]}


NESTED_CONFTEST = """import pytest
from xdist_groups import make_scheduler


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return make_scheduler(config, log)
"""
NESTED_TESTS = """import os
import pytest


@pytest.mark.parametrize("i", range(COUNT))
def test_one(i):
    with open(os.environ["GROUPS_LOG"], "a") as f:
        f.write(__name__ + " " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_make_test_runs_each_file_whole_on_one_worker(tmp_path):
    """`make test`'s scheduling (tests/xdist_groups.py) in a pytest of its own with two workers: each file's tests ran on
    one worker, and the Ray files' tests on one worker together, handed out first; the ids map to their groups."""
    from .xdist_groups import group

    assert group("tests/test_x.py::test_y[a::b]") == "tests/test_x.py" and group("tests/test_cluster_fleet.py::test_z") == "ray"
    (tmp_path / "conftest.py").write_text(NESTED_CONFTEST)
    # test_a and test_b have more tests than the two Ray files together: xdist alone would hand them out first (the most
    # tests first)
    counts = {"test_a": 20, "test_b": 15, "test_cluster_eval": 6, "test_cluster_fleet": 6}
    names = tuple(counts)
    for name, count in counts.items():
        (tmp_path / f"{name}.py").write_text(NESTED_TESTS.replace("COUNT", str(count)))
    log = tmp_path / "groups.log"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**{k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},  # the outer run's options are not this one's
                            "PYTHONPATH": str(ROOT / "tests"), "GROUPS_LOG": str(log)})
    assert r.returncode == 0, r.stdout + r.stderr
    ran = [line.split() for line in log.read_text().splitlines()]
    assert len(ran) == sum(counts.values())
    workers = {name: {w for n, w in ran if n == name} for name in names}
    assert all(len(w) == 1 for w in workers.values()), workers
    assert workers["test_cluster_eval"] == workers["test_cluster_fleet"]
    ray_worker = next(iter(workers["test_cluster_eval"]))  # the long group (xdist_groups.LONG) was handed out first
    assert next(n for n, w in ran if w == ray_worker).startswith("test_cluster_"), ran


def test_json_is_written_one_way_and_never_holds_nan():
    """Found by an attack: `stream --json-lines` wrote `"timestamp": NaN` (a frame drained after a network stream
    stalled), which is not JSON. Every JSON the product writes goes through fileio.json_text (NaN and infinities as
    null); json.dumps is left only where a digest is taken or the bench worker answers its parent."""
    import json
    import math

    from edge_inception.fileio import json_text

    allowed = ("hashlib.sha256(json.dumps", "return json.dumps(finite_json(obj)")
    ipc = {"evaluate/bench.py", "evaluate/bench_worker.py"}
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py")) for i, line in enumerate(p.read_text().splitlines(), 1)
             if "json.dumps(" in line and not any(a in line for a in allowed) and str(p.relative_to(PACKAGE)) not in ipc]
    assert not found, found
    doc = {"timestamp": math.nan, "top": [{"score": math.inf}, (1.5, -math.inf)], "ok": 2.0}
    assert json.loads(json_text(doc)) == {"timestamp": None, "top": [{"score": None}, [1.5, None]], "ok": 2.0}
    assert "NaN" not in json_text(doc) and "Infinity" not in json_text(doc, indent=2)
