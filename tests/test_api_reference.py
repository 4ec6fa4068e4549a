"""The HTML API reference is generated from the docstrings by pdoc, and it is complete.

Built into a temporary folder at each test run (nothing generated is committed): every name of
``kiyotaka_ws.__all__`` and every public name of each public submodule must appear in it with its
docstring. To read it: ``python -m pdoc kiyotaka_ws kiyotaka_ws.testing ...`` (a local server), or
``-o DIR`` for files.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import kiyotaka_ws

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pdoc") is None, reason="pdoc is not installed (dev extra)")


def public_modules() -> list[str]:
    return ["kiyotaka_ws"] + [f"kiyotaka_ws.{m.name}" for m in pkgutil.iter_modules(kiyotaka_ws.__path__)
                              if not m.name.startswith("_")]


def public_names(module_name: str) -> list[str]:
    """``__all__``, or the classes and functions the module defines whose names have no underscore."""
    module = importlib.import_module(module_name)
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return [name for name in declared if name != "__version__"]
    return [name for name, obj in vars(module).items() if not name.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == module_name]


def _words(text: str, page: bool = False) -> str:
    """Text as a reader sees it: no markup (HTML tags too for a ``page``), one space between words."""
    if page:
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = text.replace("`", "").replace("*", "")
    return " ".join(text.split())


def test_every_public_name_is_in_the_api_reference_with_its_docstring(tmp_path: pathlib.Path):
    modules = public_modules()
    built = subprocess.run([sys.executable, "-m", "pdoc", "--no-search", "-o", str(tmp_path), *modules],
                           capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    missing = []
    for module_name in modules:
        page = tmp_path.joinpath(*module_name.split(".")).with_suffix(".html")
        assert page.exists(), page
        source = page.read_text()
        text = _words(source, page=True)
        module_doc = inspect.getdoc(importlib.import_module(module_name)) or ""
        if not module_doc or _words(module_doc.split("\n\n")[0])[:60] not in text:
            missing.append(f"{module_name} (module docstring)")
        for name in public_names(module_name):
            obj = getattr(importlib.import_module(module_name), name)
            if f'id="{name}"' not in source:
                missing.append(f"{module_name}.{name}")
            elif inspect.isclass(obj) or inspect.isroutine(obj):  # constants carry no docstring of their own
                first = _words((inspect.getdoc(obj) or "").split("\n\n")[0])[:60]
                if not first or first not in text:
                    missing.append(f"{module_name}.{name} (docstring)")
    assert not missing, missing
