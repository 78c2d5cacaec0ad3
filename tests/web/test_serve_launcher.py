"""`claraseg serve` and Clara Annotate Web: without the web extra the server runs alone and says why.
(With it, test_web_e2e.py runs `claraseg serve` and follows the status page's link.)"""

from __future__ import annotations

import logging
import sys

from claraseg.server import webapp


def test_without_the_web_extra_the_server_starts_no_web_app(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "trame_slicer", None)  # as if the extra were not installed
    assert "web extra" in webapp.unavailable_reason()
    with caplog.at_level(logging.WARNING, logger="claraseg.server"):
        assert webapp.start("http://127.0.0.1:8000", 8001, None) is None
    assert "Clara Annotate Web not started" in caplog.text and "claraseg[web]" in caplog.text


def test_web_port_zero_starts_nothing():
    assert webapp.start("http://127.0.0.1:8000", 0, "token") is None
