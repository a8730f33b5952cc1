"""The documentation site builds with warnings as errors (a broken link, a missing page in the
navigation, an API object that does not exist fail here), and its generated reference pages cover
every method, command, config key and exit code the code has."""

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stablenas import errors
from stablenas.config import SearchConfig
from stablenas.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(out)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" not in r.stderr, r.stderr[-3000:]
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _text(site: Path, page: str) -> str:
    s = (site / page / "index.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", " ", s))


def test_every_marker_is_replaced(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) > 10
    for f in pages:
        assert "<!-- ref:" not in f.read_text(), f


def _package_methods() -> dict:
    """name -> (preset, options) of the methods the package registers, read in a fresh interpreter as the
    site build does (test modules register methods of their own in this process)."""
    code = ("import json; from stablenas.methods import METHODS; print(json.dumps({n: [c.preset, "
            "list(c.Options.model_fields)] for n, c in METHODS.items()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_methods_page_documents_every_method_and_its_options(site):
    text = _text(site, "methods")
    methods = _package_methods()
    assert set(methods) <= set(METHODS) and "darts-pt" in methods
    for name, (preset, options) in methods.items():
        assert name in text, name
        if preset:
            assert f"stablenas search {preset}" in text, name
        for opt in options:
            assert opt in text, (name, opt)


def test_cli_page_has_every_command(site):
    import typer

    from stablenas.cli import app

    text = _text(site, "cli")
    group = typer.main.get_command(app)
    for name in group.list_commands(None):
        assert f"stablenas {name}" in text, name
        assert "Usage: stablenas " + name in " ".join(text.split()), name


def test_configuration_page_has_every_key(site):
    text = _text(site, "configuration")
    for key, f in SearchConfig.model_fields.items():
        assert key in text
        sub = f.annotation
        for k in getattr(sub, "model_fields", {}):
            assert k in text, (key, k)


def test_exit_code_page_lists_every_error(site):
    text = " ".join(_text(site, "exit-codes").split())
    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, errors.StablenasError):
            assert name in text, name
    for code in (errors.EXIT_USER, errors.EXIT_DIVERGED, errors.EXIT_NO_SPACE):
        assert f" {code} " in text


# what the work's history looks like in text (assembled, so this file does not match itself)
HISTORY = re.compile("|".join([r"\bsession[s]? [0-9]", r"\bissue[s]? [0-9]", "earlier" + " version",
                               "uncommitted" + " probe", "field" + " notes"]), re.I)


def test_the_project_speaks_of_itself_in_the_present():
    files = [ROOT / "README.md", ROOT / "mkdocs.yml"]
    for folder, patterns in (("src", ("*.py", "*.yaml")), ("tests", ("*.py",)), ("docs", ("*.md", "*.py")),
                             ("benchmarks", ("*.py", "*.md")), ("examples", ("*",))):
        for pattern in patterns:
            files += [f for f in (ROOT / folder).rglob(pattern) if f.is_file() and "egg-info" not in str(f)]
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()[:100]}" for f in files if f.suffix != ".pyc"
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if HISTORY.search(line)]
    assert hits == []
