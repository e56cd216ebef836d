"""A smoke test against the real Gemini API, for users who have a key.

Skipped unless GEMINI_API_KEY is set AND the test is asked for by name:

    GEMINI_API_KEY=... .venv/bin/python -m pytest tests/backends/test_live.py::test_live_gemini -s
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import assert_reconciled, beam_run, read_output, vectors_by_id


@pytest.mark.slow
@pytest.mark.live
def test_live_gemini(tmp_path, capsys, request):
    asked = any("test_live" in arg for arg in request.config.invocation_params.args)
    if not (asked and os.environ.get("GEMINI_API_KEY")):
        pytest.skip("live API test: set GEMINI_API_KEY and ask for tests/backends/test_live.py::test_live_gemini")
    (tmp_path / "in").mkdir()
    texts = {"cat": "A cat sleeps on the sofa.", "kitten": "A kitten naps on the couch.",
             "rates": "The central bank raised interest rates."}
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    code, stdout, err = beam_run(
        capsys, "--input", str(tmp_path / "in" / "*"), "--output", str(tmp_path / "o"),
        "--backend", "gemini", "--output-dimensionality", "768", "--task-type", "SEMANTIC_SIMILARITY",
        "--quota-rpm", "60",
    )
    assert code == 0, err
    out = read_output(str(tmp_path / "o"))
    assert_reconciled(out)
    v = vectors_by_id(out)
    np.testing.assert_allclose([np.linalg.norm(x) for x in v.values()], 1.0, atol=1e-5)
    assert v["cat"] @ v["kitten"] > v["cat"] @ v["rates"]
    assert os.environ["GEMINI_API_KEY"] not in stdout + err
