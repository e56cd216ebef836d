"""A password or token in an input URL is never stored or printed."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from beamvec.errors import redact_url, redact_urls

from helpers import beam_run, read_output, run_cli

PASSWORD = "s3cr3t-PASSWORD-4242"
TOKEN = "tok-ABCDEF-987654"


def test_redact_url_hides_userinfo_passwords_and_query_values() -> None:
    assert redact_url(f"http://ann:{PASSWORD}@host:8080/a/b.jsonl") == "http://ann:***@host:8080/a/b.jsonl"
    assert redact_url(f"https://host/b.jsonl?sig={TOKEN}&v=2") == "https://host/b.jsonl?sig=***&v=***"
    assert redact_url(f"s3://{PASSWORD}@bucket/x") == "s3://***@bucket/x"
    for plain in ("/data/a.jsonl", "gs://bucket/a/*.jsonl", "memory://x/y.jsonl", "C:/x.jsonl"):
        assert redact_url(plain) == plain
    line = f"cannot read http://ann:{PASSWORD}@h/x.jsonl?token={TOKEN}: 404"
    assert PASSWORD not in redact_urls(line) and TOKEN not in redact_urls(line)


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"a{i}", "text": f"a served text number {i}"}) + "\n" for i in range(3))
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_a_password_in_an_input_url_reaches_no_file_and_no_output(tmp_path, capsys, server) -> None:
    host = server.removeprefix("http://")
    url = f"http://ann:{PASSWORD}@{host}/a.jsonl?token={TOKEN}"
    out = tmp_path / "out"
    code, stdout, err = beam_run(capsys, "--input", url, "--format", "jsonl", "--output", str(out))
    assert code == 0, err
    result = read_output(str(out))
    assert result["manifest"]["totals"]["embedded"] == 3  # the file was read, with its credentials
    (table,) = result["vectors"].values()
    assert set(table.column("source_shard").to_pylist()) == {f"http://ann:***@{host}/a.jsonl?token=***"}
    for path in Path(out).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PASSWORD.encode() not in data and TOKEN.encode() not in data, path
    for command in (["inspect", str(out)], ["inspect", "--json", str(out)], ["verify", str(out)]):
        code, shown, shown_err = run_cli(capsys, *command)
        assert PASSWORD not in shown + shown_err and TOKEN not in shown + shown_err, command
    assert PASSWORD not in stdout + err
