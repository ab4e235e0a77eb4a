"""Dependencies point one way: importing a lower part of the package does not load the parts above."""

import subprocess
import sys


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
