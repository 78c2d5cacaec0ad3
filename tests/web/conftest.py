"""The web app's tests import ClaraAnnotateWeb from the checkout and their helpers from this folder; every
test that drives the page leaves a screenshot of it (passed or failed) under artifacts/web/."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parents[1]), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


@pytest.fixture(autouse=True)
def _screenshot_after(request):
    yield
    if "page" in request.fixturenames:
        from webtest_support import screenshot

        try:
            screenshot(request.getfixturevalue("page"), f"{request.module.__name__.split('.')[-1]}-{request.node.name}")
        except Exception as e:  # a dead page must not hide the test's own failure
            print(f"no screenshot: {e}")
