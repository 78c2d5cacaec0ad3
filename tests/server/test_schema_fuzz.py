"""Schemathesis over the server's own OpenAPI schema: valid and invalid requests generated for every
operation (a fixed, small number per operation and mode), sent to the real server. No answer may be 5xx
except 503 (busy, with Retry-After), and the server must keep serving."""

from __future__ import annotations

import os

import pytest
import requests

try:
    import schemathesis
    from schemathesis.generation import GenerationMode
except ImportError as e:  # part of the dev extra: a missing package fails under CI
    if os.environ.get("CI"):
        raise
    pytest.skip(f"schemathesis is not installed ({e}); pip install 'claraseg[dev]'", allow_module_level=True)

from hypothesis import HealthCheck, Phase, given, settings


@schemathesis.serializer("application/x-claraseg-maskdelta", "application/x-claraseg-volume")
def _binary(ctx, value) -> bytes:
    """The binary bodies: whatever was generated, as bytes (the server must refuse garbage with 4xx)."""
    return value if isinstance(value, bytes) else repr(value).encode()


#: Examples per operation and generation mode; ~25 operations x 2 modes.
EXAMPLES = 6
#: Operations not fuzzed: stopping every job would race with the other modules' job tests.
SKIP = {("DELETE", "/train/"), ("DELETE", "/automl/")}


def test_no_operation_answers_5xx(served):
    auth = {"Authorization": f"Bearer {served.token}"}
    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    failures: list[str] = []
    checked = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case):
                nonlocal checked
                r = case.call(base_url=served.url, headers=auth, timeout=60)
                checked += 1
                if r.status_code >= 500 and not (r.status_code == 503 and r.headers.get("Retry-After")):
                    failures.append(f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:200]}")

            try:
                run()
            except Exception as e:  # hypothesis could not generate for this operation/mode: say which
                if "Unsatisfiable" not in type(e).__name__:
                    raise
    assert checked > 100, checked
    assert not failures, "\n".join(failures[:20])
    assert requests.get(served.url + "/info/", headers=auth, timeout=10).status_code == 200
