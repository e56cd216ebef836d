"""`beamvec plan` at scale: exact for small corpora, a stated sample
past 2,000 shards; and a warning for large files that cannot be split."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from beamvec.commands import plan
from beamvec.commands.plan_sample import EXACT_SHARDS, SAMPLE_SHARDS


def _plan(capsys, *args: str) -> dict:
    assert plan.main([*args, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_past_the_switch_plan_samples_and_says_how_close_it_is(tmp_path: Path, capsys) -> None:
    root = tmp_path / "in"
    root.mkdir()
    shards = EXACT_SHARDS + 500
    truth = 0
    for i in range(shards):
        n = 1 + i % 4  # 1 to 4 records a shard: sizes and counts vary together
        truth += n
        lines = "".join(json.dumps({"id": f"{i}-{j}", "text": f"shard {i} record {j} says hello"}) + "\n"
                        for j in range(n))
        (root / f"s{i:05d}.jsonl").write_text(lines)
    sampled = _plan(capsys, "--input", str(root / "*.jsonl"))
    info = sampled["sampled"]
    assert info["shards_read"] == SAMPLE_SHARDS and info["of"] == shards
    err = info["sent_error_95"]
    assert err is not None and 0 < err < 0.05
    # every text is distinct, so texts to send = records: the estimate is within its stated error
    assert abs(sampled["sent"] - truth) <= max(1, 2 * err * truth)
    assert abs(sampled["records"] - truth) / truth < 0.05
    exact = _plan(capsys, "--input", str(root / "*.jsonl"), "--exact")
    assert exact["sampled"] is None and exact["sent"] == exact["records"] == truth


def test_a_large_compressed_file_is_named_as_unsplittable(tmp_path: Path, capsys) -> None:
    root = tmp_path / "in"
    root.mkdir()
    body = "".join(json.dumps({"id": str(i), "text": f"record {i} {'x' * (i % 50)}"}) + "\n" for i in range(3000))
    (root / "big.jsonl.gz").write_bytes(gzip.compress(body.encode(), compresslevel=1))
    (root / "plain.jsonl").write_text(body)
    p = _plan(capsys, "--input", str(root / "*"), "--split-bytes", "1000")
    assert p["unsplittable"] == [str(root / "big.jsonl.gz")]
    assert plan.main(["--input", str(root / "*"), "--split-bytes", "1000", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "big.jsonl.gz is large and compressed: it cannot be split" in text
