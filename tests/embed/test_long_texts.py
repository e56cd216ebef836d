"""Over-long texts in any script never reach the server.

Long Chinese, Japanese, Russian, Hindi and English texts among short ones,
through the pipeline and the real SDK against the emulator: no request is
answered 400, each long record is a vector flagged truncated (or, with
``--on-long-text dead-letter``, a dead letter that says too long), and the
requests stay within 1.05 x the fewest 100-text requests the texts need.
Lengths are set by published ratios written here: Google's "about 4
characters a token" for English, about one token a character for CJK, and
for the others at least one token per 4 characters (so they are over 2,048
tokens by any count).
"""

from __future__ import annotations

import json
import math

import pytest

from beamvec.emulator.server import Emulator

from helpers import assert_reconciled, beam_run, read_output

KEY = "fakekey-long-texts-key-0123456789abcdef"
LIMIT = 2048  # gemini-embedding-001's input tokens (Google's model table)
LONG = {
    "zh": ("北京是中华人民共和国的首都，也是全国的政治和文化中心。", 1.0),
    "ja": ("東京は日本の首都であり、世界でも有数の大都市です。", 1.0),
    "ru": ("Москва является столицей России и крупнейшим городом страны. ", 1 / 4),
    "hi": ("नई दिल्ली भारत की राजधानी है और एक बड़ा शहर है। ", 1 / 4),
    "en": ("The committee met on Tuesday to review the budget for the coming year. ", 1 / 4),
}


@pytest.fixture
def corpus(tmp_path):
    records = [{"id": f"s{i}", "text": f"short record {i} about topic {i % 9}"} for i in range(200)]
    for lang, (sentence, tokens_per_char) in LONG.items():
        chars = math.ceil(1.5 * LIMIT / tokens_per_char)  # 1.5 x the limit by the published ratio
        for i in range(10):
            text = f"{i} " + sentence * (chars // len(sentence) + 1)
            records.append({"id": f"{lang}{i}", "text": text})
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path, records


def _run(capsys, tmp_path, path, *extra):
    with Emulator(api_key=KEY, latency_ms=1) as emu:
        code, _stdout, err = beam_run(
            capsys, "--input", str(path), "--output", str(tmp_path / "out"),
            "--backend", "gemini", "--api-base-url", emu.url, "--output-dimensionality", "64",
            "--split-bytes", "0", *extra,  # one split: requests are filled from one reader
        )
        assert code == 0, err
        return read_output(str(tmp_path / "out")), emu.stats()


@pytest.mark.slow
def test_long_texts_in_every_script_are_cut_and_flagged_never_refused(capsys, tmp_path, monkeypatch, corpus):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    path, records = corpus
    out, stats = _run(capsys, tmp_path, path)
    assert_reconciled(out)
    assert set(stats["by_status"]) == {"200"}  # not one 400
    flags = {}
    for table in out["vectors"].values():
        flags.update(zip(table.column("id").to_pylist(), table.column("truncated").to_pylist(), strict=True))
    assert set(flags) == {r["id"] for r in records}
    assert all(flags[r["id"]] == (not r["id"].startswith("s")) for r in records)
    fewest = math.ceil(len(records) / 100)
    assert stats["requests"] <= math.floor(1.05 * (fewest + 1))  # + the preflight's one


@pytest.mark.slow
def test_long_texts_are_dead_lettered_as_too_long_when_asked(capsys, tmp_path, monkeypatch, corpus):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    path, records = corpus
    out, stats = _run(capsys, tmp_path, path, "--on-long-text", "dead-letter")
    assert_reconciled(out)
    assert set(stats["by_status"]) == {"200"}
    dead = {}
    for table in out["dead"].values():
        dead.update(zip(table.column("id").to_pylist(), table.column("reason").to_pylist(), strict=True))
    assert dead == {r["id"]: "text_too_long" for r in records if not r["id"].startswith("s")}
    assert stats["texts_embedded"] == 200
