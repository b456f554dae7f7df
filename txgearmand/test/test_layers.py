"""
Tests for the import layering of L{txgearmand}: every module sits in a
layer and imports only from its own layer or lower, without cycles; the
client side stays apart; C{txgearmand.wire} and the bare package import
no Twisted.

The graph is read from the source with L{ast}: every C{import} and
C{from ... import}, wherever it is (inside functions, inside
C{if TYPE_CHECKING:}), so a type-only import counts as much as a run-time
one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, Optional

from twisted.trial.unittest import SynchronousTestCase

import txgearmand

#: The checkout: the directory holding the C{txgearmand} package.
REPO_ROOT = Path(txgearmand.__file__).resolve().parent.parent
PACKAGE = "txgearmand"
PACKAGE_DIR = REPO_ROOT / PACKAGE
PLUGIN_FILE = REPO_ROOT / "twisted" / "plugins" / "txgearmand_plugin.py"
PLUGIN_MODULE = "twisted.plugins.txgearmand_plugin"

#: Packages that are not checked (tests), relative to the package.
UNCHECKED_PREFIXES = ("txgearmand.test",)

#: The layers: a module may import only from its own layer or a lower one.
LEAVES = 0
MODEL = 1
SERVER = 2
ADAPTERS = 3
ASSEMBLY = 4

LAYER_NAMES = {
    LEAVES: "leaves",
    MODEL: "model",
    SERVER: "server",
    ADAPTERS: "adapters",
    ASSEMBLY: "assembly",
}

LAYERS: Mapping[str, int] = {
    # 0: leaves.
    "txgearmand.wire": LEAVES,
    "txgearmand.interfaces": LEAVES,
    "txgearmand._log": LEAVES,
    "txgearmand._version": LEAVES,
    "txgearmand._socketpair": LEAVES,
    "txgearmand._direct": LEAVES,
    "txgearmand.fastreactor": LEAVES,
    "txgearmand._host": LEAVES,
    "txgearmand.jsonlog": LEAVES,
    "txgearmand.endpoints": LEAVES,
    "txgearmand.clientcerts": LEAVES,
    # (txgearmand.store and txgearmand.store.*: see STORE_PACKAGE.)
    # 1: the model.
    "txgearmand.records": MODEL,
    "txgearmand.job": MODEL,
    "txgearmand.functions": MODEL,
    "txgearmand.settings": MODEL,
    "txgearmand.batching": MODEL,
    "txgearmand.schedule": MODEL,
    "txgearmand.durability": MODEL,
    "txgearmand.workers": MODEL,
    "txgearmand.doors": MODEL,
    "txgearmand.drain": MODEL,
    "txgearmand.guard": MODEL,
    "txgearmand.stats": MODEL,
    "txgearmand.flow": MODEL,
    "txgearmand.deadletter": MODEL,
    "txgearmand.failures": MODEL,
    "txgearmand.results": MODEL,
    "txgearmand.spill": MODEL,
    "txgearmand.takeover": MODEL,
    "txgearmand.storewatch": MODEL,
    "txgearmand.replay": MODEL,
    "txgearmand.meters": MODEL,
    "txgearmand.access": MODEL,
    # 2: the job server.
    "txgearmand.server": SERVER,
    "txgearmand.steps": SERVER,
    # 3: adapters.
    "txgearmand.protocol": ADAPTERS,
    # A part of GearmanProtocol: replies held behind the store's commits.
    "txgearmand.commits": ADAPTERS,
    "txgearmand.admin": ADAPTERS,
    "txgearmand.status": ADAPTERS,
    "txgearmand.metrics": ADAPTERS,
    # HTTP job submission (--http).
    "txgearmand.httpsubmit": ADAPTERS,
    "txgearmand.web": ADAPTERS,
    "txgearmand.web.site": ADAPTERS,
    # 4: assembly.
    "txgearmand.inprocess": ASSEMBLY,
    "txgearmand.testing": ASSEMBLY,
    "txgearmand.tap": ASSEMBLY,
    "txgearmand": ASSEMBLY,
    PLUGIN_MODULE: ASSEMBLY,
}

#: The store package and its modules: layer 0, and they may import only
#: these leaves (and each other).
STORE_PACKAGE = "txgearmand.store"
STORE_MAY_IMPORT = frozenset({"txgearmand.interfaces", "txgearmand._log", "txgearmand.wire"})

#: What the other leaves may import of txgearmand.
LEAVES_MAY_IMPORT = frozenset({"txgearmand._log", "txgearmand.wire"})

#: The client side, beside the layers: it may import only these.  Of the
#: layered modules, only the assembly layer may import it.
CLIENT_SIDE = frozenset({"txgearmand.client", "txgearmand.worker"})
CLIENT_SIDE_MAY_IMPORT = frozenset({"txgearmand.wire", "txgearmand._log", "txgearmand.endpoints"})

#: What the package itself may import at run time (outside TYPE_CHECKING).
PACKAGE_RUNTIME_IMPORTS = frozenset({"txgearmand._version"})

#: Modules that must not import Twisted (or zope) at all.
NO_TWISTED = frozenset({"txgearmand.wire"})


class Edge(NamedTuple):
    """
    One import of a txgearmand module by another.

    @ivar source: the importing module.
    @ivar target: the imported module.
    @ivar where: C{path:line}, for messages.
    @ivar type_checking: the import is inside C{if TYPE_CHECKING:}.
    """

    source: str
    target: str
    where: str
    type_checking: bool = False


class Import(NamedTuple):
    """
    One imported module name (any package), as found in a source file.
    """

    module: str
    line: int
    type_checking: bool


def _is_type_checking(test: ast.expr) -> bool:
    """
    Whether an C{if} test is C{TYPE_CHECKING} or C{typing.TYPE_CHECKING}.
    """
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return False


def _resolve_relative(module: str, is_package: bool, level: int, name: Optional[str]) -> str:
    """
    The absolute module a relative C{from} import names.
    """
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    if name:
        parts.append(name)
    return ".".join(parts)


def imports_of(
    source: str,
    module: str,
    is_package: bool,
    known_modules: Iterable[str],
    filename: str = "<source>",
) -> list[Import]:
    """
    Every module a source file imports, wherever the import statement is.

    C{from P import a} names module C{P.a} when that is one of
    C{known_modules}, else module C{P}; relative imports are resolved
    against C{module}.
    """
    known = set(known_modules)
    tree = ast.parse(source, filename)
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, node.lineno, type_checking))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in known else base
                found.append(Import(target, node.lineno, type_checking))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                visit(statement, True)
            for statement in node.orelse:
                visit(statement, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(tree, False)
    return found


def module_files() -> dict[str, tuple[Path, bool]]:
    """
    Every checked module: its name, its file and whether it is a package.
    """
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT).with_suffix("")
        parts = list(relative.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        if any(name == p or name.startswith(p + ".") for p in UNCHECKED_PREFIXES):
            continue
        out[name] = (path, is_package)
    out[PLUGIN_MODULE] = (PLUGIN_FILE, False)
    return out


def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def all_imports() -> dict[str, list[Import]]:
    """
    Every import (of any package) of every checked module.
    """
    files = module_files()
    out: dict[str, list[Import]] = {}
    for name, (path, is_package) in files.items():
        source = path.read_text(encoding="utf-8")
        out[name] = imports_of(source, name, is_package, files, str(path))
    return out


def build_graph() -> tuple[set[str], list[Edge]]:
    """
    The checked modules and the txgearmand-to-txgearmand import edges
    between them.
    """
    files = module_files()
    edges: list[Edge] = []
    for name, imports in all_imports().items():
        path = files[name][0].relative_to(REPO_ROOT)
        for imp in imports:
            if _in_package(imp.module) and imp.module != name:
                edges.append(Edge(name, imp.module, f"{path}:{imp.line}", imp.type_checking))
    return set(files), edges


def layer_of(module: str) -> Optional[int]:
    """
    The layer a module is in; L{None} if it was not placed (or is on the
    client side, which has no layer).
    """
    if module == STORE_PACKAGE or module.startswith(STORE_PACKAGE + "."):
        return LEAVES
    return LAYERS.get(module)


def _in_store(module: str) -> bool:
    return module == STORE_PACKAGE or module.startswith(STORE_PACKAGE + ".")


def _describe(edge: Edge) -> str:
    kind = " (TYPE_CHECKING)" if edge.type_checking else ""
    return f"{edge.source} -> {edge.target} at {edge.where}{kind}"


def find_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """
    Import cycles, each as a path that ends where it starts.  Every cycle
    the depth-first search closes is reported once.
    """
    graph: dict[str, list[str]] = {}
    for edge in edges:
        targets = graph.setdefault(edge.source, [])
        if edge.target not in targets:
            targets.append(edge.target)
        graph.setdefault(edge.target, [])
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for root in sorted(graph):
        if colour[root] != white:
            continue
        # An explicit stack: (node, iterator over its targets).
        path = [root]
        colour[root] = grey
        stack = [iter(sorted(graph[root]))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                colour[path.pop()] = black
                continue
            if colour[child] == grey:
                cycle = [*path[path.index(child) :], child]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
            elif colour[child] == white:
                colour[child] = grey
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return cycles


def check_graph(modules: Iterable[str], edges: Iterable[Edge]) -> list[str]:
    """
    Every violation of the layering in a graph, as messages naming the
    offending module, edge or cycle.
    """
    edges = list(edges)
    problems: list[str] = []
    nodes = set(modules) | {e.source for e in edges} | {e.target for e in edges}
    for module in sorted(nodes):
        if layer_of(module) is None and module not in CLIENT_SIDE:
            problems.append(f"{module} is in no layer: place it in the layer table")
    for edge in edges:
        source, target = edge.source, edge.target
        if source in CLIENT_SIDE:
            if target not in CLIENT_SIDE_MAY_IMPORT:
                problems.append(
                    "client side may import only wire, _log and endpoints: " + _describe(edge)
                )
            continue
        source_layer = layer_of(source)
        if source_layer is None:
            continue
        if target in CLIENT_SIDE:
            if source_layer != ASSEMBLY:
                problems.append(
                    "only the assembly layer may import the client side: " + _describe(edge)
                )
            continue
        target_layer = layer_of(target)
        if target_layer is None:
            continue
        if target_layer > source_layer:
            problems.append(
                f"upward import from layer {source_layer} ({LAYER_NAMES[source_layer]}) "
                f"to layer {target_layer} ({LAYER_NAMES[target_layer]}): " + _describe(edge)
            )
        elif _in_store(source):
            if not (_in_store(target) or target in STORE_MAY_IMPORT):
                problems.append(
                    "a store may import only interfaces, _log, wire and the stores: "
                    + _describe(edge)
                )
        elif source_layer == LEAVES and target not in LEAVES_MAY_IMPORT:
            problems.append("a leaf may import only _log and wire: " + _describe(edge))
        if source == PACKAGE and not edge.type_checking and target not in PACKAGE_RUNTIME_IMPORTS:
            problems.append("the package may import only _version at run time: " + _describe(edge))
    for cycle in find_cycles(edges):
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def _run_python(code: str) -> str:
    """
    Run C{python -c code} from the checkout; return its standard output.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"python -c {code!r} failed:\n{result.stderr}")
    return result.stdout.strip()


class LayeringTests(SynchronousTestCase):
    """
    The real import graph of txgearmand obeys the layers.
    """

    def setUp(self) -> None:
        self.modules, self.edges = build_graph()

    def test_no_violations(self) -> None:
        """
        No module imports from a higher layer, every module is placed in a
        layer, the client side imports only C{wire}, C{_log} and
        C{endpoints}, the leaves and stores import only what they may, the
        package imports only C{_version} at run time, and there is no
        import cycle.
        """
        problems = check_graph(self.modules, self.edges)
        self.assertEqual(problems, [], "layer violations:\n" + "\n".join(problems))

    def test_wire_imports_no_twisted_in_source(self) -> None:
        """
        C{txgearmand.wire} has no import of C{twisted} or C{zope} anywhere
        in its source.
        """
        imports = all_imports()
        for module in sorted(NO_TWISTED):
            bad = [
                f"{imp.module} at line {imp.line}"
                for imp in imports[module]
                if imp.module.split(".")[0] in ("twisted", "zope")
            ]
            self.assertEqual(bad, [], f"{module} imports Twisted")


class GraphWalkerTests(SynchronousTestCase):
    """
    The graph walker and the checker find what they should, so the
    layering test cannot pass vacuously.
    """

    def test_finds_known_edges(self) -> None:
        """
        The real graph has the edges the sources show: the protocol imports
        the server, the server imports the model, C{from txgearmand import
        _log, wire} gives edges to both modules, a C{TYPE_CHECKING} import
        is found and flagged, and an import inside a function is found.
        """
        modules, edges = build_graph()
        pairs = {(e.source, e.target) for e in edges}
        self.assertIn(("txgearmand.protocol", "txgearmand.server"), pairs)
        self.assertIn(("txgearmand.server", "txgearmand.flow"), pairs)
        self.assertIn(("txgearmand.settings", "txgearmand._log"), pairs)
        self.assertIn(("txgearmand.settings", "txgearmand.wire"), pairs)
        self.assertIn(("txgearmand.store", "txgearmand.store.sqlite"), pairs)
        type_only = {(e.source, e.target) for e in edges if e.type_checking}
        self.assertIn(("txgearmand.records", "txgearmand.interfaces"), type_only)
        self.assertIn(("txgearmand", "txgearmand.server"), type_only)
        self.assertGreater(len(edges), 40)
        self.assertIn(PLUGIN_MODULE, modules)
        self.assertIn("txgearmand.store.memory", modules)
        self.assertNotIn("txgearmand.test.test_layers", modules)

    def test_every_layered_module_exists(self) -> None:
        """
        Every module of the layer table is a real module: the table names
        no module that was renamed away.
        """
        modules, _ = build_graph()
        self.assertEqual(sorted(set(LAYERS) - modules), [])
        self.assertEqual(sorted(CLIENT_SIDE - modules), [])

    def test_imports_of(self) -> None:
        """
        L{imports_of} resolves relative imports (in a module and in a
        package), names a submodule for C{from P import submodule} and the
        package otherwise, and flags imports under C{TYPE_CHECKING}.
        """
        source = (
            "from typing import TYPE_CHECKING\n"
            "from . import _batch\n"
            "from .memory import MemoryStore\n"
            "from .. import wire, __version__\n"
            "if TYPE_CHECKING:\n"
            "    import txgearmand.server\n"
            "else:\n"
            "    import txgearmand.job\n"
            "def f():\n"
            "    from txgearmand import admin\n"
        )
        known = {
            "txgearmand",
            "txgearmand.wire",
            "txgearmand.admin",
            "txgearmand.job",
            "txgearmand.server",
            "txgearmand.store",
            "txgearmand.store._batch",
            "txgearmand.store.memory",
        }
        found = imports_of(source, "txgearmand.store.sqlite", False, known)
        self.assertEqual(
            [(i.module, i.line, i.type_checking) for i in found],
            [
                ("typing", 1, False),
                ("txgearmand.store._batch", 2, False),
                ("txgearmand.store.memory", 3, False),
                ("txgearmand.wire", 4, False),
                ("txgearmand", 4, False),
                ("txgearmand.server", 6, True),
                ("txgearmand.job", 8, False),
                ("txgearmand.admin", 10, False),
            ],
        )
        in_package = imports_of("from . import memory\n", "txgearmand.store", True, known)
        self.assertEqual([i.module for i in in_package], ["txgearmand.store.memory"])

    def test_upward_edge_reported(self) -> None:
        """
        A hand-made upward edge (the model importing the server) is
        reported with the edge's name.
        """
        edges = [
            Edge("txgearmand.server", "txgearmand.records", "server.py:1"),
            Edge("txgearmand.records", "txgearmand.server", "records.py:9", True),
        ]
        problems = check_graph(["txgearmand.server", "txgearmand.records"], edges)
        upward = [p for p in problems if p.startswith("upward")]
        self.assertEqual(len(upward), 1)
        self.assertIn("txgearmand.records -> txgearmand.server at records.py:9", upward[0])
        self.assertIn("(TYPE_CHECKING)", upward[0])

    def test_cycle_reported(self) -> None:
        """
        A cycle within one layer is reported with its path.
        """
        edges = [
            Edge("txgearmand.job", "txgearmand.records", "a"),
            Edge("txgearmand.records", "txgearmand.settings", "b"),
            Edge("txgearmand.settings", "txgearmand.job", "c"),
            Edge("txgearmand.settings", "txgearmand.wire", "d"),
        ]
        problems = check_graph([], edges)
        self.assertEqual(
            problems,
            [
                "import cycle: txgearmand.job -> txgearmand.records -> "
                "txgearmand.settings -> txgearmand.job"
            ],
        )

    def test_unplaced_module_reported(self) -> None:
        """
        A module missing from the layer table is reported, even with no
        edge; a new store module is placed by its package.
        """
        problems = check_graph(["txgearmand.newthing", "txgearmand.store.redis"], [])
        self.assertEqual(
            problems, ["txgearmand.newthing is in no layer: place it in the layer table"]
        )

    def test_client_side_reported(self) -> None:
        """
        The client importing the worker, the worker importing the server,
        and the model importing the client are all reported; the client
        importing C{endpoints} is not.
        """
        edges = [
            Edge("txgearmand.client", "txgearmand.worker", "client.py:1"),
            Edge("txgearmand.worker", "txgearmand.server", "worker.py:2"),
            Edge("txgearmand.job", "txgearmand.client", "job.py:3"),
            Edge("txgearmand.client", "txgearmand.endpoints", "client.py:4"),
            Edge("txgearmand.tap", "txgearmand.worker", "tap.py:5"),
        ]
        problems = check_graph([], edges)
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("txgearmand.client -> txgearmand.worker", problems[0])
        self.assertIn("txgearmand.worker -> txgearmand.server", problems[1])
        self.assertIn("txgearmand.job -> txgearmand.client", problems[2])

    def test_leaf_and_store_rules_reported(self) -> None:
        """
        A leaf importing another leaf than C{_log} or C{wire}, a store
        importing another leaf than C{interfaces}, C{_log} or C{wire}, and
        the package importing more than C{_version} at run time are
        reported; the allowed imports are not.
        """
        edges = [
            Edge("txgearmand._direct", "txgearmand.interfaces", "a"),
            Edge("txgearmand._socketpair", "txgearmand._log", "b"),
            Edge("txgearmand.store.sqlite", "txgearmand.endpoints", "c"),
            Edge("txgearmand.store.sqlite", "txgearmand.store._batch", "d"),
            Edge("txgearmand.store._batch", "txgearmand.interfaces", "e"),
            Edge("txgearmand", "txgearmand.server", "f"),
            Edge("txgearmand", "txgearmand.protocol", "g", True),
            Edge("txgearmand", "txgearmand._version", "h"),
        ]
        problems = check_graph([], edges)
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("txgearmand._direct -> txgearmand.interfaces", problems[0])
        self.assertIn("txgearmand.store.sqlite -> txgearmand.endpoints", problems[1])
        self.assertIn("txgearmand -> txgearmand.server", problems[2])


class ImportSideEffectTests(SynchronousTestCase):
    """
    What importing some modules loads, in a fresh interpreter.
    """

    def test_wire_loads_no_twisted(self) -> None:
        """
        C{import txgearmand.wire} loads no module of Twisted or zope.
        """
        out = _run_python(
            "import sys, txgearmand.wire; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))"
        )
        self.assertEqual(out, "[]")

    def test_package_loads_only_version(self) -> None:
        """
        C{import txgearmand} loads no Twisted, no zope, and of txgearmand
        only the package and C{_version} (not the server nor the protocol).
        """
        out = _run_python(
            "import sys, txgearmand; "
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('twisted', 'zope', 'txgearmand')))"
        )
        self.assertNotIn("txgearmand.server", out)
        self.assertNotIn("txgearmand.protocol", out)
        self.assertEqual(out, "['txgearmand', 'txgearmand._version']")
