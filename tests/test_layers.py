"""Dependencies point one way: importing a lower part of the package does not load the parts above."""

import ast
import subprocess
import sys
from pathlib import Path


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('tokenforget')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_importing_identify_or_the_losses_does_not_load_the_training_stack():
    for statement in ("import tokenforget.identify", "import tokenforget.losses", "import tokenforget"):
        loaded = loaded_after(statement)
        assert not loaded & {"tokenforget.train", "tokenforget.unlearn", "tokenforget.pipeline"}, statement
    from tokenforget import load_config, prepare  # the package's own names still resolve

    assert callable(prepare) and callable(load_config)


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tokenforget"

# bottom to top; a module may import its own layer and those below it, never one above
LAYERS = [
    {"errors", "version", "config", "registry", "plugins", "progress", "stopping"},
    {"data"},
    {"models", "cpu", "runs", "artifacts"},
    {"forward"},
    {"losses", "reference", "identify"},
    {"train", "atwu", "session", "distributed", "inputs", "disk"},
    {"evaluate"},
    {"unlearn", "prepare", "relearn", "quantize"},  # stages: a model made, with the evaluation it reports
    {"pipeline", "receipt", "report", "cli", "__init__"},
]


def imports_of(path: Path) -> set[str]:
    """The tokenforget components a module imports anywhere in it (top level, functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("tokenforget.")}
    return found


def component(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_every_import_points_down_the_layers_and_every_module_says_what_it_owns():
    layer_of = {name: level for level, names in enumerate(LAYERS) for name in names}
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = component(path)
        assert own in layer_of, f"{own}: put the new module in a layer of this test"
        assert ast.get_docstring(ast.parse(path.read_text())), (
            f"{path}: the first docstring line says what it owns"
        )
        for target in imports_of(path) - {own}:
            if layer_of[target] > layer_of[own]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not upward, upward
