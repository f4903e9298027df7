"""The house's import rule: a package uses only the packages below it (README "Layout").

    common  <  engines  <  stream  <  views  <  calibration, training, cluster  <  evaluation  <  bench  <  the CLI

Checked on the source text (every import statement, also those inside functions), so that a lazy import
cannot hide an upward dependency; and no module imports a package by its bare folder name (`stream.x`
instead of `actstream.stream.x`), which would load a second copy of it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [("common",), ("engines",), ("stream",), ("views",), ("calibration", "training", "cluster"),
          ("evaluation",), ("bench",), ("cli",)]
LEVEL = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
FOLDERS = {"common": "common", "engines": "engines", "stream": "stream", "views": "views", "calibration": "calibration",
           "training": "training", "cluster": "cluster", "evaluation": "evaluation", "bench": "bench",
           "cli": "actstream"}


def _package_of(module: str) -> str | None:
    """The layer name of an absolute module path inside the namespace, or None for a third-party module."""
    parts = module.split(".")
    if parts[0] != "actstream":
        return None
    if len(parts) == 1 or parts[1] not in LEVEL:
        return "cli"  # actstream itself and its own modules (cli, __main__)
    return parts[1]


def _imports(path: Path, pkg: str, text: str | None = None):
    """(line, absolute module) of every import in a file of package `pkg`, relative ones resolved."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    rel = path.relative_to(ROOT / FOLDERS[pkg]).with_suffix("")
    here = ["actstream"] + ([] if pkg == "cli" else [pkg]) + list(rel.parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                yield node.lineno, ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.lineno, node.module


def _files():
    for pkg, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield pkg, path


@pytest.mark.parametrize("pkg", list(FOLDERS))
def test_no_package_imports_one_above_it(pkg):
    bad = []
    for p, path in _files():
        if p != pkg:
            continue
        for line, module in _imports(path, pkg):
            other = _package_of(module)
            if other is not None and LEVEL[other] > LEVEL[pkg]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({other} is above {pkg})")
    assert not bad, "\n".join(bad)


def test_nothing_imports_a_package_by_its_bare_folder_name():
    bare = {"common", "engines", "stream", "views", "calibration", "training", "cluster", "evaluation", "bench"}
    bad = []
    for pkg, path in list(_files()) + [("tests", p) for p in sorted((ROOT / "tests").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module
                     else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in bare]
    assert not bad, "\n".join(bad)


def test_the_rule_catches_an_upward_import():
    """The checker itself: an engines module that imports the runtime, absolutely or relatively, is caught."""
    probe = ROOT / "engines" / "probe.py"  # not written: the text is handed in
    text = "import numpy\nfrom actstream.stream import core\nfrom ..stream import loop\nfrom .bundle import x\n"
    found = [(m, _package_of(m)) for _, m in _imports(probe, "engines", text)]
    assert found == [("numpy", None), ("actstream.stream", "stream"), ("actstream.stream", "stream"),
                     ("actstream.engines.bundle", "engines")]
