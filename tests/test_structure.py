"""The shape of the code: every module imports on its own, no import cycles, the layering rules of
docs/development.md, and no name from python-pkcs11 that the installed version does not have."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tokenagent"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The tokenagent modules ``path`` imports (``from x import y`` counts y when y is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:
            continue  # `if TYPE_CHECKING:` imports do not run
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tokenagent")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokenagent"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES}
    return {name for name in found if name in MODULES}


def test_every_module_imports_on_its_own() -> None:
    names = [name for name in MODULES if name != "tokenagent.__main__"]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in names:  # one interpreter per module: nothing imported by an earlier one helps
        done = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, f"{name}: {done.stderr.strip().splitlines()[-1:]}"


def _with_packages(importer: str, names: set[str]) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: those are imported too, except the
    importer's own packages, which are already running when it runs."""
    own = {importer.rsplit(".", n)[0] for n in range(1, importer.count("."))}
    found = set(names)
    for name in names:
        parts = name.split(".")
        found |= {".".join(parts[:n]) for n in range(2, len(parts))} - own
    return found


def test_no_import_cycle() -> None:
    """Imports form no cycle (lazy imports inside functions are there to avoid work, never to break
    a cycle, so they are checked too), counting that importing a submodule runs its packages'
    __init__ first."""
    graph = {
        name: _with_packages(name, _imports(path, top_level_only=False)) - {name} for name, path in MODULES.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                cycle = [*stack[stack.index(other) :], other]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("tokenagent.inf", ("pkcs11", "click", "tokenagent.token", "tokenagent.enroll", "tokenagent.cli")),
        ("tokenagent.providers", ("pkcs11", "click", "tokenagent.enroll", "tokenagent.cli")),
        ("tokenagent.request", ("pkcs11", "click", "tokenagent.token", "tokenagent.enroll", "tokenagent.cli")),
        (
            "tokenagent.store",
            ("pkcs11", "click", "tokenagent.token", "tokenagent.enroll", "tokenagent.cli", "tokenagent.ca"),
        ),
        # a CA connector knows nothing about tokens (certmonger's helpers do not either)
        (
            "tokenagent.ca",
            ("pkcs11", "click", "tokenagent.token", "tokenagent.enroll", "tokenagent.cli", "tokenagent.store"),
        ),
        ("tokenagent.secret_sources", ("pkcs11", "click", "tokenagent.token", "tokenagent.request", "tokenagent.ca")),
        ("tokenagent.enroll", ("pkcs11", "click", "tokenagent.cli")),
        ("tokenagent.token", ("click", "tokenagent.enroll", "tokenagent.cli", "tokenagent.request")),
    ],
)
def test_rooms_import_only_downwards(room: str, forbidden: tuple[str, ...]) -> None:
    """Only token/ imports pkcs11, only cli/ imports click; the pure rooms import no token code."""
    for name, path in MODULES.items():
        if not (name == room or name.startswith(room + ".")):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            for target in targets:
                if room == "tokenagent.ca" and target in ("tokenagent.store.paths", "tokenagent.token.uri"):
                    # where the state directory is (ACME's account key), not the pending store; RFC 7512
                    # URI text for curl's pkcs11 engine (EST), no PKCS#11 call
                    continue
                assert not any(target == f or target.startswith(f + ".") for f in forbidden), f"{name} imports {target}"


def test_request_der_imports_nothing_else_from_tokenagent() -> None:
    assert _imports(MODULES["tokenagent.request.der"], top_level_only=False) == set()


def test_every_pkcs11_exception_named_exists() -> None:
    """A name missing from the installed python-pkcs11 would turn every refusal into an
    AttributeError at the moment the except clause is evaluated."""
    import pkcs11.exceptions

    used: set[str] = set()
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        aliases = {"p11"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pkcs11.exceptions":
                used |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                used.add(node.attr)
    assert used, "the scan found no exception names at all"
    missing = sorted(name for name in used if not hasattr(pkcs11.exceptions, name))
    assert missing == []


def test_every_pkcs11_refusal_has_its_ckr_name() -> None:
    """Messages name a refusal as PKCS#11 does (CKR_GENERAL_ERROR): every python-pkcs11 exception
    raised for a CK_RV maps back to its CKR_ name; an unmapped value keeps its number."""
    import inspect

    import pkcs11.exceptions as exceptions

    from tokenagent.token.ckr import CKR_NAMES, exception_rv_name

    not_return_values = {"PKCS11Error", "NoSuchKey", "NoSuchToken", "MultipleObjectsReturned", "MultipleTokensReturned"}
    classes = [
        cls
        for name, cls in inspect.getmembers(exceptions, inspect.isclass)
        if issubclass(cls, exceptions.PKCS11Error) and name not in not_return_values
    ]
    assert len(classes) > 60
    unnamed = [cls.__name__ for cls in classes if exception_rv_name(cls()) not in CKR_NAMES.values()]
    assert unnamed == []
    assert exception_rv_name(exceptions.PKCS11Error("Unmapped error code 0x80000042")) == "CKR_VENDOR_DEFINED+0x42"
