"""Everything is in setup.cfg; this only makes the sdist complete (no MANIFEST.in at the top level)."""

from setuptools import setup
from setuptools.command.egg_info import egg_info

# What an unpacked sdist needs to run its own tests, in MANIFEST.in syntax (tests/test_sdist.py
# builds an sdist, installs it in a fresh virtual environment and runs some of them).
SDIST_EXTRAS = """
include CHANGELOG.md LICENSE README.md .ci/run
recursive-include tests *.py *.sh *.json
recursive-include examples *.py
prune tests/autobahn/reports
global-exclude *.py[cod]
"""


class EggInfoWithTests(egg_info):  # type: ignore[misc]
    """The file list the sdist is made from, plus the tests (conftest.py and tests/autobahn
    included), the examples and the changelog."""

    def find_sources(self) -> None:
        super().find_sources()
        for line in SDIST_EXTRAS.strip().splitlines():
            self.filelist.process_template_line(line)


setup(cmdclass={"egg_info": EggInfoWithTests})
