"""
pytest configuration shared by every test.

Trial-style tests create files with C{self.mktemp()}, relative to the
working directory; trial runs them inside C{_trial_temp}. Do the same
under pytest, so a test run never writes into the checkout.
"""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _runInTemporaryDirectory(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.chdir(tmp_path_factory.mktemp("trial_temp"))
