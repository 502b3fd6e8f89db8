"""The import layering of docs/architecture.md, checked on the source with ``ast`` (nothing is imported).

Layers, bottom to top; a module may import its own layer and the layers below it, never above:

    0  hardalign._checks, hardalign._io, hardalign._figures      helpers
    1  hardalign.estimators, hardalign.sampling, hardalign.attention
    2  hardalign.objective
    3  hardalign.speech, hardalign.vision, hardalign.sbn, hardalign.data   model families, data
    4  hardalign.train                                            loop, config, checkpoints, tasks
    5  hardalign.commands, hardalign.cli                          command line

and the estimators are stricter still: they import nothing of hardalign but ``hardalign._checks``
and themselves. Every import statement counts, at module level or inside a function (the lazy
imports of command code are still dependencies); the task registry's import strings
(``"hardalign.speech.task:SpeechTask"`` in :mod:`hardalign.train.tasks`) point downwards and are
not statements.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hardalign"

LAYERS = {
    "hardalign._checks": 0,
    "hardalign._io": 0,
    "hardalign._figures": 0,
    "hardalign.estimators": 1,
    "hardalign.sampling": 1,
    "hardalign.attention": 1,
    "hardalign.objective": 2,
    "hardalign.speech": 3,
    "hardalign.vision": 3,
    "hardalign.sbn": 3,
    "hardalign.data": 3,
    "hardalign.train": 4,
    "hardalign.commands": 5,
    "hardalign.cli": 5,
}
NAMES = {0: "helpers", 1: "core", 2: "objective", 3: "model families and data", 4: "trainer", 5: "commands"}

#: what the estimators may import of hardalign (besides themselves)
ESTIMATOR_IMPORTS = ("hardalign._checks",)


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package_dir: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every hardalign import statement in ``path``."""
    module = _module_name(path, package_dir)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from hardalign import cli" imports hardalign.cli
            names = [f"{target}.{alias.name}" for alias in node.names] if target == "hardalign" else [target]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if name == "hardalign" or name.startswith("hardalign.")]


def _layer(name: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return layer
    return None


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in SOURCES if _module_name(p) != "hardalign" and _layer(_module_name(p)) is None]
    assert not unplaced, f"add these modules to a layer in tests/test_layers.py and docs/architecture.md: {unplaced}"


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in SOURCES:
        own = _layer(_module_name(path))
        if own is None:
            continue
        for line, name in _imports(path):
            layer = _layer(name)
            if layer is not None and layer > own:
                upward.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} "
                    f"({NAMES[own]} -> {NAMES[layer]})"
                )
    assert not upward, "imports against the layering (docs/architecture.md):\n" + "\n".join(upward)


@pytest.mark.parametrize("path", sorted((PACKAGE / "estimators").rglob("*.py")), ids=lambda p: p.name)
def test_estimators_import_only_checks_and_themselves(path):
    bad = [
        f"line {line}: {name}"
        for line, name in _imports(path)
        if not (name.startswith("hardalign.estimators") or name in ESTIMATOR_IMPORTS)
    ]
    assert not bad, f"hardalign/estimators/{path.name} imports above the estimators: {bad}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "hardalign" / "speech"
    package.mkdir(parents=True)
    source = package / "bad.py"
    source.write_text("from . import model\n\ndef f():\n    from hardalign.train.loop import train\n    import hardalign.commands.speech\n")
    names = [name for _, name in _imports(source, tmp_path / "hardalign")]
    assert names == ["hardalign.speech", "hardalign.train.loop", "hardalign.commands.speech"]
    assert [_layer(name) for name in names] == [3, 4, 5]
