"""The repository keeps its promises: README commands match CI, lint is clean, layout is as agreed."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_command = ci[-1]
    assert f'pip install -e ".[dev]" && {test_command}' in readme
    assert 'pip install --quiet -e ".[dev]"' in ci
    assert "kiyotaka-ws demo" in readme


README_MAX_BYTES = 28_000  # issue 21: a README of about 25 KB; the rest lives in CHANGELOG and docstrings


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_with_a_table_of_contents_matching_its_headings():
    raw = (ROOT / "README.md").read_bytes()
    assert len(raw) <= README_MAX_BYTES, f"README.md is {len(raw)} bytes; move detail to docstrings or CHANGELOG"
    text = re.sub(r"^```.*?^```", "", raw.decode(), flags=re.DOTALL | re.MULTILINE)  # no code-block comments
    headings = re.findall(r"^(#{1,3}) (.+)$", text, flags=re.MULTILINE)
    anchors = {_anchor(title) for _, title in headings}
    contents = text[text.index("## Contents\n"):]
    contents = contents[:contents.index("\n#")]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    assert links, "no table of contents"
    assert [link for link in links if link not in anchors] == []  # every entry leads somewhere
    main = [_anchor(title) for level, title in headings[1:] if len(level) <= 2 and title != "Contents"]
    assert [anchor for anchor in main if anchor not in links] == []  # every section is listed
    order = [main.index(link) for link in links if link in main]
    assert order == sorted(order)  # listed in the README's order: guide, topics, reference


def test_top_level_layout():
    allowed = {"setup.cfg", "setup.py", "kiyotaka_ws", "tests", "examples", "README.md", "LICENSE",
               "CHANGELOG.md", ".ci", ".gitignore", ".git"}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert {p.split("/")[0] for p in tracked} <= allowed


def ruff_settings() -> list[str]:
    """setup.cfg's [ruff] section as ``--config`` options: ruff reads no setup.cfg, and the top level
    holds no other configuration file (shared/API.md)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return [option for key, value in config["ruff"].items() for option in ("--config", f"{key} = {value}")]


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or (pathlib.Path(sys.executable).parent / "ruff")
    if not pathlib.Path(ruff).exists():
        pytest.skip("ruff is not installed (it is in the dev extra)")
    # An unpacked sdist under test (tests/test_sdist.py) has its kiyotaka_ws/ moved aside.
    paths = [name for name in ("kiyotaka_ws", "tests", "examples") if (ROOT / name).exists()]
    result = subprocess.run([str(ruff), "check", *ruff_settings(), *paths],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_public_name_has_a_docstring():
    import inspect

    import kiyotaka_ws
    from kiyotaka_ws import testing

    missing = []
    for module in (kiyotaka_ws, testing):
        for name in module.__all__:
            obj = getattr(module, name)
            if name == "__version__":
                continue
            if not inspect.getdoc(obj) or (inspect.isclass(obj) and obj.__doc__ is None):
                missing.append(name)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    public = not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
                    if public and not (member.__doc__ or "").strip():
                        missing.append(f"{name}.{attr}")
    assert not missing
