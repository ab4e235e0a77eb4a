"""The repository stands alone: no file of the project reads or names a path outside it."""

import re

from conftest import REPO

# how a path outside the repository gets named: a parent of the checkout, the reference folder
# beside it, or an absolute path of a developer's machine
OUTSIDE = re.compile(
    r"""(?<!\.)\.\./|parents\[[2-9]\]|\b(?:REPO|ROOT)\.parent\b|\.parent\.parent\.parent|["']shared["']\s*[/,)]"""
    r"""|/shared/|/work/|/home/\w|/Users/\w"""
)
BESIDE = "sha" + "red"  # the reference folder's name, spelt so that this file does not name it
SCANNED = ("src", "tests", "benchmarks", "scripts", ".ci", "pyproject.toml")


def outside_paths(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line naming a path outside the repository."""
    return [(k, line.strip()) for k, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]


def test_the_pattern_catches_each_way_out():
    for line in (
        f'SHARED = REPO.parent / "{BESIDE}"',
        'gold = Path(__file__).resolve().parents[2] / "data"',
        f'open("../{BESIDE}/data/tofu/full.json")',
        'default=str(ROOT.parent / "x")',
        f'DATA = Path("/mnt/{BESIDE}/data")',
        'DATA = Path("/work/data")',
        f'base / "{BESIDE}" / "data"',
    ):
        assert outside_paths(line), line
    assert not outside_paths(f'REPO = Path(__file__).resolve().parents[1]\n{BESIDE} = cache / "reference"')
    assert not outside_paths('"""`{group}/{id}/gold_logit`, `.../logp`"""')  # an ellipsis, not a parent


def test_no_project_file_names_a_path_outside_the_repository():
    this = REPO / "tests" / "test_standalone.py"
    found = []
    for top in SCANNED:
        root = REPO / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            built = any(part.endswith(".egg-info") or part == "__pycache__" for part in path.parts)
            if (
                path == this
                or built
                or path.suffix not in {".py", ".sh", ".toml", ".yaml", ".yml", ".md", ""}
            ):
                continue
            found += [f"{path.relative_to(REPO)}:{k}: {line}" for k, line in outside_paths(path.read_text())]
    assert not found, "paths outside the repository:\n" + "\n".join(found)
