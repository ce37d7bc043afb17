"""Readers for each format, their error paths, filtering, re-indexing and the split."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data import (
    DataError,
    encode,
    encode_with_vocabulary,
    filter_min_count,
    fingerprint,
    load_dataset,
    read_raw,
    split_leave_one_out,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sequences_reader_keeps_order_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "s.txt", "7 3 1 2\n\n8 5 5\n")
    assert read_raw(path, "sequences") == {"7": ["3", "1", "2"], "8": ["5", "5"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [("1 2 3\n2\n", "s.txt:2: user '2' has no items"), ("1 2\n1 3\n", "s.txt:2: user '1'")],
)
def test_sequences_reader_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_raw(write(tmp_path, "s.txt", text), "sequences")


def test_movielens_reader_sorts_by_timestamp_then_item(tmp_path: Path) -> None:
    text = "1::30::5::200\n1::20::3::100\n1::10::4::200\n2::5::1::9\n"
    raw = read_raw(write(tmp_path, "ratings.dat", text), "movielens")
    assert raw == {"1": ["20", "10", "30"], "2": ["5"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [("1::2::3\n", "ratings.dat:2: expected"), ("1::x::3::4\n", "ratings.dat:2: MovieID")],
)
def test_movielens_reader_rejects_malformed_lines(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_raw(write(tmp_path, "ratings.dat", "1::1::5::1\n" + line), "movielens")


def test_events_csv_sorts_by_time_keeping_log_order_for_ties(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,timestamp,extra\n"
        "alice,sku-b,2024-01-01T10:00:00Z,x\n"
        "alice,sku-a,2024-01-01T09:00:00Z,x\n"
        "bob,sku-c,5,x\nbob,sku-a,5,x\n"
    )
    raw = read_raw(write(tmp_path, "events.csv", text), "events")
    assert raw == {"alice": ["sku-a", "sku-b"], "bob": ["sku-c", "sku-a"]}


def test_events_parquet_reads_string_ids_and_numeric_times(tmp_path: Path) -> None:
    table = pa.table(
        {"user_id": ["u", "u", "v"], "item_id": ["b", "a", "a"], "timestamp": [2, 1, 3]}
    )
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    assert read_raw(path, "events") == {"u": ["a", "b"], "v": ["a"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_id,item_id\nu,i\n", r"missing column\(s\) \['timestamp'\]"),
        ("user_id,item_id,timestamp\nu,i,yesterday\n", "events.csv:2: unparsable timestamp"),
        ("user_id,item_id,timestamp\nu,i,1\n,i,2\n", "events.csv:3: empty user_id"),
    ],
)
def test_events_reader_errors_name_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_raw(write(tmp_path, "events.csv", text), "events")


def test_unreadable_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_raw(tmp_path / "missing.txt", "sequences")
    with pytest.raises(DataError, match="unknown format 'json'"):
        read_raw(write(tmp_path, "a.txt", "1 2\n"), "json")
    with pytest.raises(DataError, match="no events found"):
        read_raw(write(tmp_path, "empty.txt", "\n"), "sequences")
    (tmp_path / "bin.txt").write_bytes(b"1 \xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_raw(tmp_path / "bin.txt", "sequences")
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_raw(write(tmp_path, "bad.parquet", "nope"), "events")


def test_min_count_filter_iterates_until_every_user_and_item_qualifies() -> None:
    raw = {"a": ["x", "x", "y"], "b": ["x", "y", "z"], "c": ["z"]}
    # c (1 event) goes first; that leaves z with 1 event, so z goes in a second pass.
    assert filter_min_count(raw, 2) == {"a": ["x", "x", "y"], "b": ["x", "y"]}
    assert filter_min_count(raw, 1) is raw


def test_empty_result_after_filtering_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no users left after min-count 5"):
        load_dataset(write(tmp_path, "s.txt", "1 2 3\n"), "sequences", min_count=5)


def test_encode_numbers_numeric_ids_numerically_and_keeps_vocabulary() -> None:
    dataset = encode({"2": ["10", "9", "b"], "10": ["a", "9"]})
    assert dataset.users == ["2", "10"]
    assert dataset.item_ids == ["9", "10", "a", "b"]
    assert [s.tolist() for s in dataset.sequences] == [[2, 1, 4], [3, 1]]
    assert dataset.n_items == 4
    assert dataset.n_events == 5
    assert fingerprint(dataset) == fingerprint(encode({"10": ["a", "9"], "2": ["10", "9", "b"]}))


def test_encode_with_vocabulary_drops_unknown_items() -> None:
    dataset = encode_with_vocabulary({"u": ["x", "new", "y"]}, ["y", "x"])
    assert dataset.sequences[0].tolist() == [2, 1]


def test_leave_one_out_split() -> None:
    split = split_leave_one_out([np.array([1, 2, 3, 4]), np.array([5, 6])])
    assert split.train[0].tolist() == [1, 2]
    assert split.valid[0] == 3
    assert split.test[0] == 4
    assert split.history(0, include_valid=True).tolist() == [1, 2, 3]
    assert split.train[1].tolist() == [5, 6]
    assert split.valid[1] == 0
    assert split.test[1] == 0
