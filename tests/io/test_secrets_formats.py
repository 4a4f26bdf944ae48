"""Credential redaction and body decoding."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from asyncpipe._exceptions import StoreError
from asyncpipe.io import decode, redact_options, redact_url, to_frame
from asyncpipe.io._errors import fail
from asyncpipe.io._formats import content_type_format, infer_format
from asyncpipe.io._secrets import collect_secrets, scrub, scrub_exception


def test_redact_url_variants():
    assert redact_url("postgresql+psycopg2://u:p%40ss@h:5432/db") == "postgresql+psycopg2://u:***@h:5432/db"
    assert redact_url("https://user@host/x") == "https://user@host/x"
    assert redact_url("https://h/x?token=abc&page=2") == "https://h/x?token=***&page=2"
    assert redact_url("s3://bucket/key.csv") == "s3://bucket/key.csv"


def test_redact_options_nested_and_harmless_names_kept():
    opts = {"key": "AK", "secret": "S", "client_kwargs": {"aws_session_token": "T", "region_name": "eu"}}
    assert redact_options(opts) == {
        "key": "***",
        "secret": "***",
        "client_kwargs": {"aws_session_token": "***", "region_name": "eu"},
    }
    assert redact_options({"anon": True, "use_ssl": False}) == {"anon": True, "use_ssl": False}


def test_scrub_exception_rewrites_the_whole_chain():
    secrets = collect_secrets(
        options={"secret": "hunter2-secret"}, headers={"Authorization": "Bearer tok-123456"}
    )
    try:
        try:
            raise OSError("denied for hunter2-secret")
        except OSError as inner:
            raise RuntimeError("token tok-123456 rejected") from inner
    except RuntimeError as exc:
        scrub_exception(exc, secrets)
        assert str(exc) == "token *** rejected" and str(exc.__cause__) == "denied for ***"
    assert scrub("see postgresql://a:b-pass@h/db", ()) == "see postgresql://a:***@h/db"


def test_fail_chains_and_masks():
    cause = ValueError("bad password pw-12345 for postgresql://u:pw-12345@h/db")
    with pytest.raises(StoreError) as info:
        fail(
            "Could not write",
            store="sql",
            obj="postgresql://u:pw-12345@h/db",
            cause=cause,
            secrets={"pw-12345"},
        )
    assert info.value.__cause__ is cause
    assert "pw-12345" not in str(info.value) + info.value.obj + str(cause)
    assert info.value.obj == "postgresql://u:***@h/db"


@pytest.mark.parametrize(
    ("path", "fmt"),
    [("a.csv", "csv"), ("a.CSV.gz", "csv"), ("x/y.ndjson", "jsonl"), ("z.json", "json"), ("q.pq", "parquet"),
     ("noext", None)],
)  # fmt: skip
def test_infer_format(path, fmt):
    assert infer_format(path) == fmt


def test_content_type_format():
    assert content_type_format("application/json; charset=utf-8") == "json"
    assert content_type_format("application/problem+json") == "json"
    assert content_type_format("text/csv") == "csv"
    assert content_type_format("application/x-ndjson") == "jsonl"
    assert content_type_format("text/html") is None


def test_decode_json_records_key_and_parquet():
    doc = b'{"data": {"items": [{"a": 1}, {"a": 2}]}}'
    assert decode(doc, "json", records_key="data.items")["a"].tolist() == [1, 2]
    buf = io.BytesIO()
    pd.DataFrame({"a": [3]}).to_parquet(buf)
    assert decode(buf.getvalue(), "parquet")["a"].tolist() == [3]
    with pytest.raises(ValueError, match="Unknown format"):
        decode(b"", "xml")


def test_to_frame_inputs():
    import pyarrow as pa

    assert to_frame(pa.table({"a": [1]}))["a"].tolist() == [1]
    assert to_frame({"a": [1, 2]}).shape == (2, 1)
    assert to_frame([1, 2])["value"].tolist() == [1, 2]
    with pytest.raises(TypeError, match="DataFrame"):
        to_frame(42)
