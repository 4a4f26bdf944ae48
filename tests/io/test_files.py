"""File source and sinks against real filesystems: local disk, memory://, and S3 (moto server)."""

from __future__ import annotations

import pickle
import uuid

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest

from asyncpipe._exceptions import StoreError, TransientError
from asyncpipe.io import CsvSink, FileChunk, FileSource, ParquetSink, StoreUnavailable, read_files, to_parquet


def _frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": range(start, start + n), "day": ["mon", "tue"] * (n // 2) + ["mon"] * (n % 2)})


def _read_all(source: FileSource) -> pd.DataFrame:
    frames = [source(item) for item in source.asyncpipe_inputs()]
    return pd.concat(frames, ignore_index=True).sort_values("id", ignore_index=True)


# -- sources ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_local_glob_one_partition_per_file(tmp_path, fmt):
    for i in range(3):
        frame = _frame(4, start=i * 4)
        path = tmp_path / f"part{i}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path)
        else:
            frame.to_json(path, orient="records", lines=True)
    (tmp_path / "notes.txt").write_text("ignored by the glob")
    source = FileSource(str(tmp_path / f"*.{fmt}"))
    items = source.asyncpipe_inputs()
    assert items == sorted(str(tmp_path / f"part{i}.{fmt}") for i in range(3))
    assert _read_all(source)["id"].tolist() == list(range(12))


def test_memory_fs_items_are_full_urls_and_format_is_inferred():
    root = f"memory://src-{uuid.uuid4().hex}"
    _frame(3).to_csv(f"{root}/a.csv", index=False)
    _frame(3, 3).to_parquet(f"{root}/b.parquet")
    source = FileSource([f"{root}/*.csv", f"{root}/*.parquet"])
    items = source.asyncpipe_inputs()
    assert all(item.startswith("memory://") for item in items)
    assert _read_all(source)["id"].tolist() == list(range(6))


def test_big_csv_splits_into_byte_ranges_that_tile_the_file(tmp_path):
    frame = pd.DataFrame({"id": range(5000), "text": [f"row {i}" for i in range(5000)]})
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    source = FileSource(str(path), split_bytes=10_000)
    items = source.asyncpipe_inputs()
    assert len(items) > 5 and all(isinstance(i, FileChunk) for i in items)
    parts = [source(i) for i in items]
    assert all(list(p.columns) == ["id", "text"] for p in parts)
    assert pd.concat(parts, ignore_index=True)["id"].tolist() == list(range(5000))


def test_big_jsonl_splits_too(tmp_path):
    path = tmp_path / "big.jsonl"
    pd.DataFrame({"id": range(3000)}).to_json(path, orient="records", lines=True)
    source = FileSource(str(path), split_bytes=4096)
    items = source.asyncpipe_inputs()
    assert len(items) > 3
    assert pd.concat([source(i) for i in items])["id"].tolist() == list(range(3000))


def test_big_parquet_splits_by_row_groups(tmp_path):
    path = tmp_path / "big.parquet"
    pd.DataFrame({"id": range(10_000)}).to_parquet(path, row_group_size=1000)
    source = FileSource(str(path), split_bytes=1)
    items = source.asyncpipe_inputs()
    assert [(i.start, i.stop) for i in items] == [(g, g + 1) for g in range(10)]
    assert pd.concat([source(i) for i in items])["id"].tolist() == list(range(10_000))
    # Items are plain tuples of str/int: picklable, and stable partition identities.
    assert pickle.loads(pickle.dumps(items[3])) == items[3]


def test_read_files_builds_a_threaded_source_stage(tmp_path):
    _frame(2).to_csv(tmp_path / "x.csv", index=False)
    stage = read_files(str(tmp_path / "*.csv"), name="raw", retries=3)
    assert stage.kind == "source" and stage.name == "raw"
    assert stage.options.executor == "thread" and stage.options.retries == 3
    assert list(stage.signature.parameters) == ["item"]


def test_fingerprint_changes_when_the_file_changes(tmp_path):
    path = tmp_path / "x.csv"
    _frame(2).to_csv(path, index=False)
    source = FileSource(str(path))
    before = source.asyncpipe_fingerprint(str(path))
    _frame(5).to_csv(path, index=False)
    assert source.asyncpipe_fingerprint(str(path)) != before


# -- bad input -------------------------------------------------------------------------------
def test_malformed_csv_names_store_and_object(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('a,b\n1,2\n3,"unterminated\n')
    good = tmp_path / "good.csv"
    good.write_text("a,b\n5,6\n")
    source = FileSource(str(tmp_path / "*.csv"), name="raw")
    items = source.asyncpipe_inputs()
    with pytest.raises(StoreError) as info:
        source(str(bad))
    err = info.value
    assert err.store == "files" and err.obj == str(bad)
    assert "bad.csv" in str(err) and "raw" in str(err) and err.__cause__ is not None
    assert not isinstance(err, TransientError)  # permanent: no retry
    # The other partition still reads: one bad file fails only its own partition.
    assert source(items[1])["a"].tolist() == [5]


def test_missing_file_and_empty_glob(tmp_path):
    source = FileSource(str(tmp_path / "nothing-*.csv"), name="raw")
    with pytest.raises(StoreError, match="No files match"):
        source.asyncpipe_inputs()
    with pytest.raises(StoreError, match="no such object") as info:
        source(str(tmp_path / "gone.csv"))
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_unknown_format_is_a_clear_error(tmp_path):
    (tmp_path / "x.dat").write_text("1")
    with pytest.raises(StoreError, match="format="):
        FileSource(str(tmp_path / "x.dat"))(str(tmp_path / "x.dat"))


# -- sinks -----------------------------------------------------------------------------------
def test_parquet_sink_is_idempotent_and_atomic(tmp_path, part):
    sink = ParquetSink(str(tmp_path / "out"), name="save")
    for _ in range(3):  # retries / re-runs of the same partitions
        sink(_frame(4), part("aa01"))
        sink(_frame(4, 4), part("bb02"))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["part-aa01.parquet", "part-bb02.parquet"]  # no temp files left behind
    assert sorted(pd.read_parquet(tmp_path / "out")["id"]) == list(range(8))


def test_failed_write_leaves_the_previous_file_intact(tmp_path, part):
    sink = ParquetSink(str(tmp_path / "out"))
    sink(_frame(3), part("cc03"))
    unwritable = pd.DataFrame({"obj": [object()]})  # pyarrow cannot encode this
    with pytest.raises(StoreError) as info:
        sink(unwritable, part("cc03"))
    assert info.value.obj.endswith("part-cc03.parquet")
    assert pd.read_parquet(tmp_path / "out/part-cc03.parquet")["id"].tolist() == [0, 1, 2]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-cc03.parquet"]


def test_a_value_that_is_not_a_table_names_the_sink_and_partition(tmp_path, part):
    sink = CsvSink(str(tmp_path / "out"), name="save")
    expected = r"Sink 'save' got a value it cannot write for partition p-ee05"
    with pytest.raises(StoreError, match=expected) as info:
        sink(42, part("ee05"))
    assert isinstance(info.value.__cause__, TypeError) and info.value.obj == str(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_hive_partitions_and_stale_files_are_removed(tmp_path, part):
    sink = ParquetSink(str(tmp_path / "ds"), partition_cols=["day"])
    result = sink(_frame(4), part("dd04"))
    assert result["rows"] == 4 and len(result["files"]) == 2
    assert (tmp_path / "ds/day=mon/part-dd04.parquet").exists()
    # Re-run of the same partition with data only for "tue": its "mon" file must go.
    sink(pd.DataFrame({"id": [9], "day": ["tue"]}), part("dd04"))
    assert not (tmp_path / "ds/day=mon/part-dd04.parquet").exists()
    table = pq.read_table(tmp_path / "ds", partitioning="hive").to_pandas()
    assert table["id"].tolist() == [9] and table["day"].astype(str).tolist() == ["tue"]


def test_hive_missing_column_names_it(tmp_path, part):
    sink = ParquetSink(str(tmp_path / "ds"), partition_cols=["region"])
    with pytest.raises(StoreError, match="region"):
        sink(_frame(2), part("ee05"))


def test_csv_sink_accepts_records_and_round_trips(tmp_path, part):
    sink = CsvSink(str(tmp_path / "csv"))
    sink([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], part("ff06"))
    sink([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], part("ff06"))
    back = FileSource(str(tmp_path / "csv/*.csv"))
    assert _read_all_by(back, "a")["b"].tolist() == ["x", "y"]


def _read_all_by(source: FileSource, col: str) -> pd.DataFrame:
    return pd.concat([source(i) for i in source.asyncpipe_inputs()]).sort_values(col)


def test_memory_sink(part):
    root = f"memory://sink-{uuid.uuid4().hex}"
    out = ParquetSink(root)(_frame(2), part("0f0f"))
    assert out["files"] == [f"memory:///{root[len('memory://') :]}/part-0f0f.parquet"]
    assert pd.read_parquet(out["files"][0])["id"].tolist() == [0, 1]


def test_to_parquet_stage_wires_its_input():
    stage = to_parquet("out/", input="clean", name="save")
    assert stage.kind == "sink" and stage.inputs == {"value": "clean"}
    assert list(stage.signature.parameters) == ["value", "partition"]


# -- S3 over a real S3-protocol server (moto) ------------------------------------------------
def test_s3_round_trip_source_and_sinks(s3, part):
    opts = s3.options()
    prefix = f"s3://lake/run-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("s3", **opts)
    for i in range(3):
        fs.pipe_file(f"{prefix}/raw/{i}.csv", _frame(2, i * 2).to_csv(index=False).encode())
    source = FileSource(f"{prefix}/raw/*.csv", storage_options=opts, name="raw")
    items = source.asyncpipe_inputs()
    assert items == [f"{prefix}/raw/{i}.csv" for i in range(3)]
    sink = ParquetSink(f"{prefix}/clean", storage_options=opts, partition_cols=["day"])
    for i, item in enumerate(items):
        sink(source(item), part(f"{i:04x}"))
        sink(source(item), part(f"{i:04x}"))  # a retry rewrites the same objects
    back = FileSource(f"{prefix}/clean/**/*.parquet", storage_options=opts)
    assert sorted(_read_all(back)["id"]) == list(range(6))
    assert len(fs.glob(f"{prefix}/clean/**/*.parquet")) == 6  # 3 partitions x {mon, tue}


def test_s3_wrong_credentials_is_permanent_and_secret_free(s3_auth):
    opts = s3_auth.options(key="AKIAWRONGKEY0000", secret="wrong-secret-value-1234")
    source = FileSource("s3://lake/any/*.csv", storage_options=opts, name="raw")
    with pytest.raises(StoreError) as info:
        source.asyncpipe_inputs()
    err = info.value
    assert err.store == "files" and "s3://lake/any" in err.obj
    assert "credentials" in str(err) and not isinstance(err, TransientError)
    for text in (str(err), str(err.__cause__), repr(source)):
        assert "wrong-secret-value-1234" not in text and "AKIAWRONGKEY0000" not in text
    assert "***" in repr(source)


def test_s3_unreachable_host_is_a_transient_store_error():
    opts = {
        "key": "k-unreachable",
        "secret": "s-unreachable-123",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        "skip_instance_cache": True,
    }
    source = FileSource("s3://lake/x.csv", storage_options=opts, name="raw")
    with pytest.raises(StoreUnavailable) as info:
        source("s3://lake/x.csv")
    assert isinstance(info.value, TransientError) and info.value.obj == "s3://lake/x.csv"
    assert "s-unreachable-123" not in str(info.value)


def test_item_template_lines_up_sources_by_item(tmp_path):
    for day in ("2024-01-02", "2024-01-01"):
        _frame(2).to_csv(tmp_path / f"orders-{day}.csv", index=False)
        _frame(3).to_parquet(tmp_path / f"prices-{day}.parquet")
    orders = FileSource(str(tmp_path / "orders-{item}.csv"))
    prices = FileSource(str(tmp_path / "prices-{item}.parquet"))
    assert orders.asyncpipe_inputs() == prices.asyncpipe_inputs() == ["2024-01-01", "2024-01-02"]
    assert len(orders("2024-01-01")) == 2 and len(prices("2024-01-02")) == 3
    with pytest.raises(StoreError, match="no such object"):
        orders("2024-12-31")
