"""The layering of the package: workflows only build graphs, level runners run them, and no import circles.

Read from the source (every ``import`` statement, at module level or inside functions), so a lazy import
inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "hcld_bids"

#: Public functions of hcld_bids.workflows that are not graph factories (init_*_wf): graph helpers.
WORKFLOW_HELPERS = {
    "subject_wf_name", "t1w_wf_name", "static_provenance",            # names and node inputs of the graph
    "inference_regime", "regime_description", "harmonize_mem_gb",    # harmonization node settings
    "batches_harmonization",                                         # one batch node per participant (CUDA)
    "training_inputs_dir",                                           # where the train graph exports
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """hcld_bids modules imported anywhere in ``path``."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    resolved = set()
    for target in found:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    assert _cycles(_graph()) == []


def test_workflows_import_neither_the_level_runners_nor_the_command_line():
    for name, targets in _graph().items():
        if name.startswith("hcld_bids.workflows"):
            wrong = sorted(t for t in targets if t.startswith(("hcld_bids.levels", "hcld_bids.cli")))
            assert not wrong, f"{name} imports {wrong}"


def test_level_runners_do_not_import_the_command_line():
    for name, targets in _graph().items():
        if name.startswith("hcld_bids.levels"):
            assert not [t for t in targets if t.startswith("hcld_bids.cli")], name


def test_workflows_only_build_graphs():
    """Every public function of hcld_bids.workflows is an init_*_wf factory or a named graph helper; running
    a level (opening the model, checks, nipype execution, reports) lives in hcld_bids.levels."""
    for path in sorted((PACKAGE / "workflows").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                is_factory = node.name.startswith("init_") and node.name.endswith("_wf")
                assert is_factory or node.name in WORKFLOW_HELPERS, f"{path.name}: {node.name}"


def test_every_level_has_its_own_runner():
    from hcld_bids import levels
    from hcld_bids.levels import group, participant, train

    assert callable(levels.run_level)
    assert callable(participant.run_participant) and callable(group.run_group) and callable(train.run_train)
