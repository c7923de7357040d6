"""The package is floors whose imports only point down (or sideways, within a floor)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "selfmem"

# The root package's __init__ runs before any subpackage's, so it may only sit on the ground floor.
FLOORS = {
    "selfmem": 0,
    "selfmem.common": 0,
    "selfmem.models": 1,
    "selfmem.retrieve": 1,
    "selfmem.infer": 2,
    "selfmem.select": 2,
    "selfmem.train": 3,
    "selfmem.lift": 4,
}


def floor_of(module: str) -> int:
    """The floor of a ``selfmem`` module: that of its top-level subpackage."""
    return FLOORS[".".join(module.split(".")[:2])]


def imported_modules(module: str, source: str, is_package: bool) -> list[str]:
    """Every ``selfmem`` module that ``source`` (the text of ``module``) imports, relative
    imports resolved; ``from selfmem import x`` counts as importing ``selfmem.x``."""
    package = module if is_package else module.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            # `from selfmem import lift` names its subpackage only in the imported name
            if target == "selfmem":
                targets += [f"selfmem.{alias.name}" for alias in node.names]
            else:
                targets.append(target)
    return [t for t in targets if t == "selfmem" or t.startswith("selfmem.")]


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """One line for each import of ``module`` that targets a higher floor than its own."""
    own = floor_of(module)
    return [f"{module} (floor {own}) imports {target} (floor {floor_of(target)})"
            for target in imported_modules(module, source, is_package) if floor_of(target) > own]


def package_modules() -> dict[str, Path]:
    """Every module under selfmem/ by its dotted name."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_every_subpackage_has_a_floor():
    subpackages = {f"selfmem.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert sorted(subpackages - FLOORS.keys()) == [], "subpackages missing from FLOORS in tests/test_layers.py"


def test_imports_only_point_down():
    upward = [line for module, path in package_modules().items()
              for line in upward_imports(module, path.read_text(), path.name == "__init__.py")]
    assert upward == [], "imports that point up a floor:\n" + "\n".join(upward)


def test_an_upward_import_is_named_with_both_floors():
    source = ("import selfmem.common.io\n"
              "from selfmem.models.selector import Selector\n"
              "from selfmem.train.loop import fit\n"
              "from selfmem import lift\n"
              "from ..lift.pipeline import lift as run_lift\n"
              "from . import beam\n"
              "def lazy():\n"
              "    import selfmem.train.generator\n")
    assert upward_imports("selfmem.infer.generate", source) == [
        "selfmem.infer.generate (floor 2) imports selfmem.train.loop (floor 3)",
        "selfmem.infer.generate (floor 2) imports selfmem.lift (floor 4)",
        "selfmem.infer.generate (floor 2) imports selfmem.lift.pipeline (floor 4)",
        "selfmem.infer.generate (floor 2) imports selfmem.train.generator (floor 3)",
    ]


def test_relative_imports_resolve_from_a_package_init():
    assert imported_modules("selfmem.models", "from .seq2seq import Seq2SeqModel\nfrom .. import train\n",
                            is_package=True) == ["selfmem.models.seq2seq", "selfmem.train"]
