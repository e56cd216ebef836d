"""`--force` with a new configuration covers the whole output or is refused."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from helpers import assert_reconciled, beam_run, read_output


@pytest.mark.slow
def test_force_with_a_new_configuration_on_part_of_the_inputs_is_refused(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": f"{name}{i}", "text": f"a  text  with  spaces {name} {i}"}) + "\n" for i in range(2))
        )
    out = tmp_path / "out"
    code, _, err = beam_run(capsys, "--input", str(src / "*.jsonl"), "--output", str(out))
    assert code == 0, err
    before = read_output(str(out))
    # a new configuration (another normalization) on two of the three files
    code, _, err = beam_run(capsys, "--input", str(src / "[ab].jsonl"), "--output", str(out),
                            "--normalization", "collapse", "--force")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "--force" in lines[0] and "c.jsonl" in lines[0] and "a.jsonl" not in lines[0], lines[0]
    after = read_output(str(out))
    assert after["manifest"] == before["manifest"] and after["success"]  # nothing was touched
    # covering the whole output, it runs, and every shard is under the new configuration
    code, _, err = beam_run(capsys, "--input", str(src / "*.jsonl"), "--output", str(out),
                            "--normalization", "collapse", "--force")
    assert code == 0, err
    after = read_output(str(out))
    assert_reconciled(after)
    fingerprints = {s["config_fingerprint"] for s in after["manifest"]["shards"].values()}
    assert len(fingerprints) == 1 and fingerprints != {s["config_fingerprint"] for s in before["manifest"]["shards"].values()}
    assert ds.dataset(str(out / "vectors"), format="parquet").to_table().num_rows == 6
