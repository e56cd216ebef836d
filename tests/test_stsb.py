"""STS Benchmark through the whole pipeline: a real check of the local model
and of the id-to-vector alignment (a misaligned row would sink the score)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from helpers import assert_reconciled, beam_run, read_output, vectors_by_id

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-test.csv"


def load_pairs() -> list[tuple[str, str, float]]:
    pairs = []
    for line in STSB.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        pairs.append((fields[5], fields[6], float(fields[4])))
    return pairs


def test_stsb_spearman_through_the_pipeline(tmp_path, capsys):
    pairs = load_pairs()
    assert len(pairs) == 1379
    corpus = tmp_path / "stsb"
    corpus.mkdir()
    # Three shards, pairs split across them, so alignment must hold across shards.
    shards: list[list[str]] = [[], [], []]
    for n, (a, b, _) in enumerate(pairs):
        shards[n % 3].append(json.dumps({"id": f"{n}-a", "text": a}))
        shards[(n + 1) % 3].append(json.dumps({"id": f"{n}-b", "text": b}))
    for i, lines in enumerate(shards):
        (corpus / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = beam_run(capsys, "--input", str(corpus / "*.jsonl"), "--output", str(tmp_path / "out"))
    assert code == 0, err
    out = read_output(str(tmp_path / "out"))
    assert_reconciled(out)
    vectors = vectors_by_id(out)
    assert len(vectors) == 2 * len(pairs)
    cosine = [float(vectors[f"{n}-a"] @ vectors[f"{n}-b"]) for n in range(len(pairs))]
    score = spearmanr(cosine, [g for _, _, g in pairs]).correlation * 100
    print(f"STS-B test Spearman x100: {score:.2f}")
    assert score >= 81.5
    # and a shuffled pairing must score near zero: the check can fail
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(pairs))
    wrong = [float(vectors[f"{n}-a"] @ vectors[f"{m}-b"]) for n, m in enumerate(shuffled)]
    assert abs(spearmanr(wrong, [g for _, _, g in pairs]).correlation * 100) < 20
