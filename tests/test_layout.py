"""The package's structure: imports run one way (no cycles), a stage never imports another stage, and sibling
modules are imported at the top of a module where a reader sees them (only cli.py defers its stage imports, and
options.py the TrainingArguments classes, so `--help` stays instant). Read from the source with ast:
function-local and TYPE_CHECKING imports count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tinyllm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, only_in: set[str] | None = None) -> list[tuple[str, bool]]:
    """(imported tinyllm module, imported inside a function) for each import statement of the file; with
    `only_in`, just the imports inside the functions of those names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    in_function: dict[int, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                in_function.setdefault(id(node), fn.name)
    out = []
    for node in ast.walk(tree):
        if only_in is not None and in_function.get(id(node)) not in only_in:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tinyllm"):
                continue
            names = [f"{target}.{a.name}" for a in node.names]
            found = [n for n in names if n in modules] or [target]
        elif isinstance(node, ast.Import):
            found = [a.name for a in node.names if a.name.startswith("tinyllm")]
        else:
            continue
        for name in found:
            while name not in modules and "." in name:  # `from tinyllm.x import function` -> tinyllm.x
                name = name.rpartition(".")[0]
            out.append((name, id(node) in in_function))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        me = _module_name(path)
        graph[me] = {m for m, _ in _imports(path) if m != me and m != "tinyllm"}
    return graph


def _stages() -> set[str]:
    """The modules whose functions `tinyllm COMMAND` runs: those imported by the functions cli.COMMANDS calls."""
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    runners = {call.args[2].id for call in ast.walk(tree) if isinstance(call, ast.Call)
               and getattr(call.func, "id", "") == "Command" and len(call.args) > 2
               and isinstance(call.args[2], ast.Name)}
    assert len(runners) >= 10, runners
    return {m for m, _ in _imports(PACKAGE / "cli.py", only_in=runners)}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def height(graph: dict[str, set[str]]) -> int:
    """Modules on the longest import chain (the graph is acyclic)."""
    memo: dict[str, int] = {}

    def depth(node):
        if node not in memo:
            memo[node] = 1 + max((depth(n) for n in graph.get(node, ())), default=0)
        return memo[node]

    return max(depth(n) for n in graph)


def test_no_import_cycles():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_every_command_runs_a_stage_module():
    stages = _stages()
    assert {"tinyllm.training.pretrain", "tinyllm.training.sft", "tinyllm.evaluation.eval_stage",
            "tinyllm.data.prepare_stage", "tinyllm.training.plan", "tinyllm.data.tokenizer_stage",
            "tinyllm.inference.serve", "tinyllm.inference.export", "tinyllm.inference.terminal",
            "tinyllm.evaluation.compare"} <= stages


def test_no_stage_imports_another_stage():
    graph, stages = _graph(), _stages()
    wrong = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if b in stages and a != "tinyllm.cli")
    assert not wrong, "a stage imports a stage (move what they share down a floor): " + ", ".join(wrong)


def test_sibling_modules_are_imported_at_the_top():
    """Only cli.py (its command functions) and options.py (the TrainingArguments subclasses, once options are
    parsed) import tinyllm modules inside functions; anywhere else such an import hides an edge of the graph
    from the reader."""
    deferred = {PACKAGE / "cli.py", PACKAGE / "options.py"}
    hidden = sorted(f"{_module_name(p)} imports {m} inside a function" for p in PACKAGE.rglob("*.py")
                    if p not in deferred for m, local in _imports(p) if local)
    assert not hidden, "; ".join(hidden)


@pytest.mark.parametrize("floor", ["tinyllm.errors", "tinyllm.io", "tinyllm.logs", "tinyllm.formatting",
                                   "tinyllm.modeling", "tinyllm.model_io", "tinyllm.device", "tinyllm.config"])
def test_the_floor_imports_no_room_above_it(floor):
    """The modules every stage stands on import only each other (and never data/, training/, inference/,
    evaluation/)."""
    above = sorted(m for m in _graph()[floor] if m.count(".") > 1)
    assert not above, f"{floor} imports {above}"
