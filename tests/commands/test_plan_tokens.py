"""`beamvec plan`'s token figure against what the API counts (the emulator's stats).

Plan calls no API; the same texts are then embedded through the real SDK and
the emulator's billed tokens are compared with plan's figure: within ±10 %,
on an English corpus and on a Chinese/Japanese one.
"""

from __future__ import annotations

import json
import os

from beamvec.backends.genai import GenaiBackend
from beamvec.commands import plan
from beamvec.emulator import Emulator

os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
KEY = "fakekey-Sy-plan-tokens-0123456789"

ENGLISH = [
    "The committee met on Tuesday to review the budget for the coming year.",
    "Several members argued that the old bridge should be repaired first.",
    "Inspectors had found cracks in two of its supports last winter.",
    "Others wanted the money spent on the library, which has not been renovated.",
    "After a long discussion, they asked the engineers for a detailed estimate.",
    "The weather stayed cold and grey for most of the week.",
]
CJK = [
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "这座城市保存着大量的历史遗迹，例如故宫、天坛和长城。",
    "每年都有数以百万计的游客来到这里参观。",
    "東京は日本の首都であり、世界でも有数の大都市です。",
    "多くの人々が毎日電車で通勤しています。",
    "서울은 대한민국의 수도이며 가장 큰 도시입니다.",
]


def _corpus(sentences: list[str], n: int) -> list[str]:
    """n distinct texts (plan sends a repeat once) of one to four sentences."""
    return [f"{i}. " + " ".join(sentences[(i + k) % len(sentences)] for k in range(1 + i % 4))
            for i in range(n)]


def _plan_and_bill(tmp_path, capsys, monkeypatch, texts: list[str]) -> tuple[int, int]:
    """(plan's sent_tokens, the tokens the emulator billed for the same texts)."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    assert plan.main(["--input", str(path), "--backend", "gemini", "--json", "--quiet"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["sent"] == len(texts)
    assert planned["tokens_expected_error"] == 0.10 and "per script" in planned["token_basis"]
    with Emulator(api_key=KEY) as emu:
        backend = GenaiBackend(mode="gemini", api_base_url=emu.url, output_dimensionality=8, timeout_s=10)
        for start in range(0, len(texts), 100):
            backend.embed(texts[start:start + 100])
        billed = emu.stats()["tokens"]
    return planned["sent_tokens"], billed


def test_plan_tokens_match_what_the_api_counts_in_english(tmp_path, capsys, monkeypatch):
    planned, billed = _plan_and_bill(tmp_path, capsys, monkeypatch, _corpus(ENGLISH, 300))
    assert abs(planned - billed) <= 0.10 * billed


def test_plan_tokens_match_what_the_api_counts_in_cjk(tmp_path, capsys, monkeypatch):
    planned, billed = _plan_and_bill(tmp_path, capsys, monkeypatch, _corpus(CJK, 300))
    assert abs(planned - billed) <= 0.10 * billed
