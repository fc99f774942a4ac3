"""The package's shape: no import cycle among fsl modules, every fsl import at the top of its file
(outside the CLI, which imports lazily to start fast), and layers that only import downward."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import networkx as nx

from fsl.harness.adapt import adapt
from fsl.harness.align import align
from fsl.harness.analysis import analyse, predict_episodes
from fsl.harness.calibration import calibrate
from fsl.harness.experiment import run_experiment
from fsl.harness.select import compare_recipes
from fsl.harness.sweep import sweep
from fsl.harness.train import train
from fsl.inference.heads import experiment_head

PACKAGE = Path(__file__).resolve().parent.parent / "fsl"

# The data flow of docs/design.md, bottom to top: a module may import from its own layer or below.
LAYERS = [
    "errors",
    "paths",
    "files",
    "config",
    "data",
    "encoders",
    "store",
    "episodes",
    "methods",
    "inference",
    "harness",
    "apps",
    "cli",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def fsl_imports(tree: ast.AST) -> list[ast.ImportFrom | ast.Import]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "fsl":
            found.append(node)
        elif isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "fsl" for alias in node.names):
            found.append(node)
    return found


def imported_modules(node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    """The fsl modules an import statement loads: `from fsl.x import y` is fsl.x.y when y is a module."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    found = set()
    for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        found.add(submodule if submodule in known else node.module)
    return found & known


def package_graph() -> tuple[nx.DiGraph, dict[str, list[str]]]:
    """(module import graph from every import in the file, function-local fsl imports by module)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    local: dict[str, list[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in fsl_imports(tree):
            for target in imported_modules(node, set(files)):
                if target != name:
                    graph.add_edge(name, target)
            if id(node) not in top:
                local.setdefault(name, []).append(f"{path.name}:{node.lineno}")
    return graph, local


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1


def test_no_import_cycle_among_fsl_modules():
    graph, _ = package_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {[' -> '.join([*cycle, cycle[0]]) for cycle in cycles[:5]]}"


def test_fsl_imports_sit_at_the_top_of_each_file_outside_the_cli():
    _, local = package_graph()
    # The CLI imports per command, and the package root lends the API lazily (PEP 562), so that
    # `fsl --help` and `import fsl` load no torch; everywhere else imports sit at the top.
    lazy = (LAYERS.index("cli"), layer_of("fsl"))
    outside_cli = {module: where for module, where in local.items() if layer_of(module) not in lazy}
    assert not outside_cli, f"function-local fsl imports (a hidden cycle, or a layer reaching up): {outside_cli}"


def test_layers_import_only_downward():
    graph, _ = package_graph()
    upward = [f"{a} -> {b}" for a, b in graph.edges if layer_of(b) > layer_of(a) and layer_of(a) >= 0]
    assert not upward, f"imports that reach up the data flow: {upward}"


def test_heads_depend_on_torch_and_their_fusion_only():
    graph, _ = package_graph()
    reached = nx.descendants(graph, "fsl.methods")
    assert reached <= {"fsl.errors"} | {module for module in graph if module.startswith("fsl.methods.")}, (
        f"importing the heads loads {sorted(reached)}"
    )


# The apps that answer photos (everything under apps/ but quickstart, which runs the research job
# `fsl quickstart` and so imports the harness by design).
JOB_APPS = {"fsl.apps.quickstart"}


def harness_reached_from(graph: nx.DiGraph, module: str) -> list[str]:
    return sorted(m for m in nx.descendants(graph, module) | {module} if m.startswith("fsl.harness"))


def test_the_answer_time_layer_never_reaches_the_harness():
    graph, _ = package_graph()
    inference = [module for module in graph if module.startswith("fsl.inference")]
    assert len(inference) >= 5
    reached = {module: harness_reached_from(graph, module) for module in inference}
    assert not any(reached.values()), f"the answer-time layer loads research jobs: {reached}"


def test_apps_answer_photos_through_the_answer_time_layer_alone():
    """No app but the research job's reaches the harness (directly or through another module), and
    FewShotClassifier, predict and the demo import the support-set core that answers."""
    graph, _ = package_graph()
    apps = [module for module in graph if module.startswith("fsl.apps.") and module not in JOB_APPS]
    reached = {module: harness_reached_from(graph, module) for module in apps}
    assert not any(reached.values()), f"apps reaching the harness: { {m: r for m, r in reached.items() if r} }"
    for module in ("fsl.apps.classifier", "fsl.apps.predict", "fsl.apps.demo.backend"):
        assert "fsl.inference.classifier" in graph.successors(module), f"{module} does not answer through the core"


def test_scores_and_softmax_live_in_the_answer_time_layer_not_in_apps():
    """Turning logits into confidences or a "none of these" answer is the core's job: no app calls a
    softmax, a known-ness score or a head's forward pass of its own."""
    found = []
    for path in (PACKAGE / "apps").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            called = node.func if isinstance(node, ast.Call) else None
            name = getattr(called, "attr", None) or getattr(called, "id", None)
            if name in {"softmax", "log_softmax", "known_scores", "probabilities", "scores", "known", "classify"}:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}()")
    assert not found, f"scoring outside fsl/inference: {found}"


def test_fsl_paths_is_the_only_place_a_default_location_is_spelled():
    """A path parameter's default, or an option's `default=`, that names a location comes from
    fsl/paths.py, so moving where runs, results, checkpoints or episodes go is a one-line change."""
    locations = ("runs", "results", "checkpoints", "episodes", ".fsl")
    path_words = ("root", "dir", "out", "results", "runs", "checkpoints", "path", "folder")
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "paths.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.args[len(node.args.args) - len(node.args.defaults) :] + node.args.kwonlyargs
                values = node.args.defaults + node.args.kw_defaults
                defaults = [
                    v for a, v in zip(arguments, values) if v is not None and any(w in a.arg for w in path_words)
                ]
            elif isinstance(node, ast.Call):
                defaults = [k.value for k in node.keywords if k.arg == "default"]
            else:
                continue
            for value in defaults:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    if value.value.split("/")[0] in locations:
                        spelled.append(f"{path.relative_to(PACKAGE)}:{value.lineno} {value.value!r}")
    assert not spelled, f"default locations spelled outside fsl/paths.py: {spelled}"


def test_the_library_reports_through_logging_not_print():
    """Progress and notes below apps/ go through `logging` (logger "fsl.<module>"): the CLI decides
    where they go (stderr, "fsl: ..."), and a Python caller can silence, capture or redirect them."""
    printed = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in {"apps", "cli"}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printed.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not printed, f"print() below apps/: {printed}"


WORKSPACE_ROOTS = {"episodes_root", "store_root", "checkpoints_root", "runs_root", "results_root"}


ROOTS = {"episodes_root", "store_root", "checkpoints_root", "runs_root", "results_root"}  # the Workspace's


def test_jobs_take_config_catalog_and_one_workspace_by_name():
    """Every job (and the head an experiment answers with) reads (config, catalog, workspace, ...):
    no root passed positionally in one order here and another there, and no episodes, store,
    checkpoints, runs or results root left as a parameter above the store: the Workspace names them."""
    jobs = (run_experiment, train, calibrate, analyse, adapt, align, sweep, compare_recipes, experiment_head)
    for job in (*jobs, predict_episodes):
        names = list(inspect.signature(job).parameters)
        assert names[1] == "catalog" and "workspace" in names[2:4], f"{job.__name__}{names}"
    rooted = []
    for path in (path for layer in ("inference", "harness", "apps") for path in (PACKAGE / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.args + node.args.kwonlyargs
                rooted += [f"{path.relative_to(PACKAGE)}:{node.name}({a.arg})" for a in arguments if a.arg in ROOTS]
    assert not rooted, f"roots passed outside the Workspace: {rooted}"
