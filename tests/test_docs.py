"""The documentation's references resolve: links, anchors, file paths and `zooscope.X` names.

README.md, docs/*.md and benchmarks/*.md are what a newcomer reads; a link to a moved page, a
heading renamed under an anchor, or a module path from before a package move must fail here, not
in a reader's browser. The repository is also self-contained: no tracked file may point outside it.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks").glob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Top-level folders whose files a page may name in backticks (results/, resources/ and logs/ are
# outputs of a run, which a fresh checkout does not have).
SOURCE_DIRS = ("src", "tests", "benchmarks", "scripts", "rules", "schemas", "envs", "profiles", "report",
               "zoos", "docs", ".ci")
MODULE_NAME = re.compile(r"^zooscope(\.[A-Za-z_]\w*)+$")
README_COMMANDS = (
    "python3 -m pip install torch==2.14.1 -e . && snakemake --cores all",
    "python3 -m pip install --quiet torch==2.14.1 -e '.[test]' && python3 -m pytest",
)
README_MAX_LINES = 250


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (shell examples, not references)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in _prose(path).splitlines():
        if match := re.match(r"^#{1,6}\s+(.*)$", line):
            slug = github_anchor(match[1])
            count = seen.get(slug, 0)
            result.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
    return result


def test_github_anchor_follows_githubs_rules():
    # Hand-derived from GitHub's rendering of these headings.
    assert github_anchor("`discrimination.tsv`: good versus bad") == "discriminationtsv-good-versus-bad"
    assert github_anchor("The demo's label-noise series") == "the-demos-label-noise-series"
    assert github_anchor("`bench_memory.py`") == "bench_memorypy"
    assert github_anchor("The demo zoo (`zoos/demo.tsv`)") == "the-demo-zoo-zoosdemotsv"


def _links():
    for page in PAGES:
        for target in LINK.findall(_prose(page)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                yield pytest.param(page, target, id=f"{page.relative_to(REPO)}->{target}")


@pytest.mark.parametrize(("page", "target"), list(_links()))
def test_relative_link_resolves(page, target):
    file_part, _, anchor = target.partition("#")
    destination = (page.parent / file_part).resolve() if file_part else page
    assert destination.exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"
    assert REPO in destination.parents or destination == REPO, f"{target} points outside the repository"
    if anchor:
        assert destination.suffix == ".md", f"{target}: anchors are checked in Markdown pages only"
        assert anchor in anchors(destination), (
            f"{page.relative_to(REPO)} links to {target}, but {destination.name} has no heading "
            f"with that anchor (it has: {sorted(anchors(destination))})")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(_prose(REPO / "README.md"))
              if not target.startswith(("http:", "https:", "#"))}
    missing = [page.name for page in (REPO / "docs").glob("*.md") if page.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def _code_spans():
    for page in PAGES:
        for span in CODE_SPAN.findall(_prose(page)):
            yield page, span.strip()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_file_paths_in_backticks_exist(page):
    dead = []
    for source, span in _code_spans():
        if source != page or any(c in span for c in "{}*<> $=") or "/" not in span:
            continue
        path = span.rstrip("/").split("::")[0]
        if path.split("/")[0] in SOURCE_DIRS and not (REPO / path).exists():
            dead.append(span)
    assert not dead, f"{page.relative_to(REPO)} names files that do not exist: {dead}"


def _defines(module: Path, name: str) -> bool:
    text = module.read_text(encoding="utf-8")
    return re.search(rf"^(def|class)\s+{name}\b|^{name}\s*[:=]|\"{name}\"", text, re.MULTILINE) is not None


def resolve_module_name(dotted: str) -> bool:
    """True when `zooscope.a.b.c` names a module of src/ or a name defined in one."""
    parts = dotted.split(".")
    base = REPO / "src"
    module = None
    for index, part in enumerate(parts):
        package, file = base.joinpath(*parts[: index + 1]), base.joinpath(*parts[:index], part + ".py")
        if package.is_dir() and (package / "__init__.py").exists():
            module = package / "__init__.py"
            continue
        if file.exists():
            module = file
            continue
        # Not a module: a name defined in the last module; at most one more part (an attribute of it).
        return module is not None and index >= len(parts) - 2 and _defines(module, part)
    return True


def test_resolve_module_name_tells_moved_modules_apart():
    assert resolve_module_name("zooscope.fits.powerlaw")
    assert resolve_module_name("zooscope.io.atomic_path")
    assert resolve_module_name("zooscope.fit_power_law")  # exported by the package's __init__
    assert not resolve_module_name("zooscope.powerlaw_fit")  # the module's name before the move
    assert not resolve_module_name("zooscope.fits.no_such_module")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_names_exist(page):
    stale = [span for source, span in _code_spans() if source == page
             and MODULE_NAME.match(span) and not resolve_module_name(span)]
    assert not stale, f"{page.relative_to(REPO)} names modules or functions that do not exist: {stale}"


def test_readme_is_short_and_keeps_its_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, "README.md is the ten-minute read: move reference to docs/"
    head = "\n".join(text.splitlines()[:12])
    for command in README_COMMANDS:
        assert command in head, f"README.md must show {command!r} at the top"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert README_COMMANDS[1] in ci, ".ci/run must run the README's test command"


def test_readme_config_table_markers():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.count("<!-- config-table -->") == 1 and text.count("<!-- /config-table -->") == 1
    table = text.split("<!-- config-table -->")[1].split("<!-- /config-table -->")[0]
    assert table.strip().startswith("|"), "the config table sits between the markers"


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_refers_outside_the_repository():
    # Spelled in pieces so that this file does not match itself.
    outside = ["../" + "shared", "/work/" + "shared"]
    # The design notes and the papers next to them, named bare (a docs/ page of that name is fine),
    # and the notes' names of the papers ("seed" and a number).
    named = re.compile(r"(?<![/\w])(design\.md|seeds[/])|\bseeds? 00\d")
    hits = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            hits += [f"{path.relative_to(REPO)}:{number}: {word}" for word in outside if word in line]
            hits += [f"{path.relative_to(REPO)}:{number}: {m[0]}" for m in named.finditer(line)]
    assert not hits, "files outside the repository are not there for users; write it into docs/:\n" + "\n".join(hits)


# The column references: each output table's columns, as the code defines them, and the pages whose
# tables describe them (a column is documented where a table row's first cell names it in backticks).
COLUMN_PAGES = ("outputs.md", "statistics.md", "intake.md", "finetunes.md", "jacobian.md")


def _documented_columns() -> dict[str, set[str]]:
    """Per page: every backticked name in the first cell of a table row."""
    found = {}
    for name in COLUMN_PAGES:
        cells = [line.split("|")[1] for line in _prose(REPO / "docs" / name).splitlines()
                 if line.startswith("|") and line.count("|") > 2]
        found[name] = {span for cell in cells for span in CODE_SPAN.findall(cell)}
    return found


def _output_columns() -> dict[str, tuple[str, ...]]:
    from zooscope.analysis.aggregate import MODEL_COLUMNS
    from zooscope.analysis.delta import DELTA_COLUMNS, DELTA_METRICS
    from zooscope.analysis.metrics import LAYER_COLUMNS
    from zooscope.analysis.regression import REGRESSION_COLUMNS
    from zooscope.analysis.trajectory import TRAJECTORY_COLUMNS
    from zooscope.sources.coverage import COVERAGE_COLUMNS

    return {
        "layers.tsv": (*LAYER_COLUMNS, *DELTA_COLUMNS),
        "models.tsv": (*MODEL_COLUMNS, "base", *DELTA_METRICS),
        "coverage.tsv": COVERAGE_COLUMNS,
        "regressions.tsv": REGRESSION_COLUMNS,
        "trajectories.tsv": TRAJECTORY_COLUMNS,
    }


@pytest.mark.parametrize("table", ["layers.tsv", "models.tsv", "coverage.tsv", "regressions.tsv", "trajectories.tsv"])
def test_every_output_column_is_documented(table):
    """Every column the code writes to the table has a row in a column reference of docs/."""
    documented = set().union(*_documented_columns().values())
    missing = [column for column in _output_columns()[table] if column not in documented]
    assert not missing, f"{table} columns without a row in docs/{{{','.join(COLUMN_PAGES)}}}: {missing}"


def test_the_column_check_reads_table_rows_only():
    """The check can fail: a name in prose or in a later cell is not a column's documentation."""
    documented = _documented_columns()["outputs.md"]
    assert {"layer", "alpha", "num_tensors"} <= documented
    assert "zooscope" not in documented and "esd.randomize" not in documented
