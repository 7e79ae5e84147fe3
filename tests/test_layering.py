"""The package's layering, read from its imports: no import cycle, and no module importing one above it.

Every `import cifarkit...` counts, at the top of a module or inside a function (a lazy import still ties the
two modules together), and under `if TYPE_CHECKING:` too: an import that never runs still says one module is
written in terms of another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifarkit"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _owner(name: str) -> str:
    """The module a dotted name lives in (cifarkit.optim.OPTIMIZERS -> cifarkit.optim)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cifarkit":
            submodules = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            # `from cifarkit.train import distributed` imports the submodule (its package runs first anyway)
            found.update(submodules if len(submodules) == len(node.names) else {_owner(node.module), *submodules})
        elif isinstance(node, ast.Import):
            found.update(_owner(a.name) for a in node.names if a.name.split(".")[0] == "cifarkit")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _ancestors(name: str) -> set[str]:
    """The packages a module lives in: Python runs them before it, so importing one is no edge of its own."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


GRAPH = {name: _imports(ast.parse(path.read_text())) - _ancestors(name) for name, path in MODULES.items()}


def _reachable(start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for dep in GRAPH[stack.pop()]:
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


def test_there_is_no_import_cycle():
    cycles = sorted(name for name in GRAPH if name in _reachable(name))
    assert not cycles, f"modules on an import cycle: {cycles}"


def _below(module: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(dep for dep in _reachable(module) if dep.startswith(forbidden))


ABOVE_DATA_AND_MODELS = ("cifarkit.config", "cifarkit.train", "cifarkit.experiments", "cifarkit.inference",
                         "cifarkit.loading", "cifarkit.pretrained", "cifarkit.evaluate", "cifarkit.predict",
                         "cifarkit.export", "cifarkit.serve", "cifarkit.cli", "cifarkit.optim", "cifarkit.schedules")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("cifarkit.data", "cifarkit.models"))))
def test_data_and_models_import_nothing_above_them(module):
    assert not _below(module, ABOVE_DATA_AND_MODELS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("cifarkit.train")))
def test_training_does_not_import_the_experiments(module):
    assert not _below(module, ("cifarkit.experiments", "cifarkit.cli"))


@pytest.mark.parametrize("module", ["cifarkit.inference", "cifarkit.loading", "cifarkit.pretrained", "cifarkit.predict",
                                    "cifarkit.evaluate", "cifarkit.export", "cifarkit.serve", "cifarkit.images"])
def test_using_a_model_imports_no_training_module(module):
    assert not _below(module, ("cifarkit.train", "cifarkit.experiments", "cifarkit.cli"))


@pytest.mark.parametrize("module", ["cifarkit.optim", "cifarkit.optim.muon", "cifarkit.schedules", "cifarkit.device",
                                    "cifarkit.settings", "cifarkit.data.split", "cifarkit.models.registry"])
def test_the_parts_config_composes_sit_below_it(module):
    assert not _below(module, ("cifarkit.config", "cifarkit.train"))


def test_each_part_owns_its_settings():
    """Each section of the run config is a dataclass beside the code that uses it (config.py composes them), and
    its valid ranges are field metadata there: config.py keeps only the run's own settings (TrainConfig)."""
    import dataclasses

    from cifarkit.config import Config

    owners = {f.name: f.default_factory.__module__ for f in dataclasses.fields(Config)
              if dataclasses.is_dataclass(f.default_factory)}
    assert owners == {"data": "cifarkit.data.split", "preprocess": "cifarkit.data.preprocess",
                      "augment": "cifarkit.data.loader", "model": "cifarkit.models.registry",
                      "optim": "cifarkit.optim", "schedule": "cifarkit.schedules", "train": "cifarkit.config"}
    assert "RANGES" not in vars(__import__("cifarkit.config").config)
    checked = {f"{section}.{f.name}" for section, owner in owners.items()
               for f in dataclasses.fields(getattr(Config(), section)) if "check" in f.metadata}
    assert {"optim.lr", "schedule.name", "augment.mix_alpha", "data.dataset", "train.steps"} <= checked


def test_the_graph_was_read():
    """A guard for the tests above: the reader finds the imports it should, lazy ones included."""
    assert "cifarkit.optim" in GRAPH["cifarkit.config"]
    assert "cifarkit.train.loop" in _reachable("cifarkit.cli")
    assert "cifarkit.pretrained" in _reachable("cifarkit.predict")


def test_one_module_loads_a_model():
    """cifarkit.loading is the one way from a source (shipped name, run folder, checkpoint) to a model in use:
    everything that uses a model reaches it, and the shipped-model registry below it only reads files."""
    for user in ("cifarkit.predict", "cifarkit.evaluate", "cifarkit.export", "cifarkit.teach"):
        assert "cifarkit.loading" in GRAPH[user], user
    assert not _below("cifarkit.pretrained", ("cifarkit.inference", "cifarkit.loading"))


def test_no_function_is_longer_than_60_lines():
    """A function that does not fit on a screen is several steps that want names of their own."""
    long = sorted(f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                  for path in MODULES.values() for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.end_lineno - node.lineno + 1 > 60)
    assert not long, long


def test_one_vocabulary_from_the_bundle_to_the_export():
    """What a model file holds is spelled one way from the training checkpoint to TypeScript: every field of the
    model bundle that the export carries has the same name in the export schema (which the TypeScript ModelInfo
    is tested against field by field, web/packages/classify/test/schema.test.ts), and a model in use
    (TrainedModel) answers to the same names. Older spellings live only in checkpoints.LEGACY_NAMES."""
    import dataclasses

    from cifarkit.bundle import ModelBundle
    from cifarkit.checkpoints import FIELDS, LEGACY_NAMES
    from cifarkit.export_metadata import export_schema
    from cifarkit.inference import TrainedModel

    bundle = {f.name for f in dataclasses.fields(ModelBundle)}
    exported = {"classes", "superclasses", "fine_to_coarse", "temperature", "outlier", "step", "val"}
    assert exported <= bundle & set(export_schema()["properties"])
    assert exported <= {f.name for f in dataclasses.fields(TrainedModel)}
    assert bundle <= set(FIELDS)  # every bundle field is checked when a checkpoint is read
    assert not set(LEGACY_NAMES) & (bundle | set(FIELDS)) and set(LEGACY_NAMES.values()) <= bundle | set(FIELDS)
    sources = "".join(path.read_text() for name, path in MODULES.items() if name != "cifarkit.checkpoints")
    assert not any(old in sources for old in LEGACY_NAMES)  # no module past the reader knows the old names


def _module_of(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name in MODULES else None


def test_following_a_model_into_its_onnx_export_climbs_back_up_at_most_twice(tmp_path):
    """Every call from one cifarkit module into another during `export_onnx` of a shipped model, recorded as it
    runs: a call from a module into one that imports it (a lower layer calling a higher one back, through a
    callback or an object handed down) is a climb. The model file's path into the export may climb at most twice."""
    pytest.importorskip("onnxruntime")
    import sys

    import numpy as np

    from cifarkit.export import export_onnx

    calls: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        if event != "call" or (callee := _module_of(frame)) is None or frame.f_back is None:
            return
        caller = _module_of(frame.f_back)
        if caller is not None and caller != callee:
            calls.add((caller, callee))

    pictures = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    sys.setprofile(profile)
    try:
        export_onnx("airbench-cifar10", tmp_path / "model.onnx", check_images=pictures)
    finally:
        sys.setprofile(None)
    assert ("cifarkit.export", "cifarkit.loading") in calls and ("cifarkit.loading", "cifarkit.pretrained") in calls
    climbs = sorted((caller, callee) for caller, callee in calls if caller in _reachable(callee))
    print(f"{len(calls)} module-to-module calls, {len(climbs)} climbing back up: {climbs}")
    assert len(climbs) <= 2, climbs
