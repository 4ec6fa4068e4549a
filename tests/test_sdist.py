"""The sdist is complete: built, unpacked, installed in a fresh virtual environment, its tests pass.

The check a packager (or ``pip download`` user) makes: ``python -m build --sdist``, unpack, install
the archive, run the tests it ships. The unpacked tree's own ``kiyotaka_ws/`` is moved aside, so the
tests can only import the installed copy. Dependencies come from this environment (a ``.pth`` line
in the fresh one) to stay offline and fast: ~10 s.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A small part of the suite that exercises what the sdist must ship: conftest.py's fixtures, the
# examples folder, README/.ci/run/CHANGELOG (test_repo) and the package itself.
SDIST_TESTS = ["tests/test_events.py", "tests/test_repo.py", "tests/test_fake_server.py"]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="the build package is not installed (dev extra)")
def test_sdist_builds_installs_and_passes_its_own_tests(tmp_path: pathlib.Path):
    if not (ROOT / "setup.py").exists():
        pytest.skip("not a source checkout")
    built = _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path / "dist"), str(ROOT)])
    assert built.returncode == 0, built.stdout + built.stderr
    (archive,) = sorted((tmp_path / "dist").glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        tar.extractall(tmp_path / "unpacked")
    for needed in ("tests/conftest.py", "tests/autobahn/run.sh", "examples/trade_tape.py", "CHANGELOG.md",
                   "README.md", "LICENSE", ".ci/run"):
        assert needed in names, needed
    (tree,) = (tmp_path / "unpacked").iterdir()

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # What pip does with an sdist: build a wheel from it (in an isolated build environment),
    # then install that wheel into the fresh environment.
    wheel = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "-w", str(tmp_path / "wheels"), str(archive)])
    assert wheel.returncode == 0, wheel.stdout + wheel.stderr
    (wheel_file,) = sorted((tmp_path / "wheels").glob("*.whl"))
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                      str(wheel_file)])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The dependencies (brotli, attrs, websockets, pytest, ...) from this environment, after the
    # fresh one's own site-packages (a plain path line: this environment's .pth files, such as an
    # editable install of the checkout, are not processed).
    fresh_site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    ours = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    pathlib.Path(fresh_site, "zz_test_dependencies.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")

    shutil.move(str(tree / "kiyotaka_ws"), str(tmp_path / "source_moved_aside"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    where = _run([str(python), "-c", "import kiyotaka_ws; print(kiyotaka_ws.__file__)"], cwd=tree, env=env)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    tests = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *SDIST_TESTS], cwd=tree, env=env)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and " failed" not in tests.stdout
