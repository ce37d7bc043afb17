"""Event logs in, dense leave-one-out splits out.

Three input formats (reference A5 for the ML-1M conventions):

* ``sequences``: ``user item_1 … item_n`` per line, in time order (the shipped ML-1M split);
* ``movielens``: GroupLens ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), sorted by
  timestamp with ties broken by item id, as the official code does;
* ``events``: CSV or Parquet with ``user_id,item_id,timestamp`` (string ids allowed), the
  service's event-log export; timestamps are epoch numbers or ISO 8601 strings; ties keep file
  order.

Everything after reading is a pure function of Python lists and numpy arrays. Bad input raises
:class:`DataError` naming the file and line.
"""

import csv
import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import numpy as np

from training.extras import missing_train_extra

logger = logging.getLogger(__name__)

RawSequences = dict[str, list[str]]
"""External user id → external item ids in time order."""

EVENT_COLUMNS = ("user_id", "item_id", "timestamp")


class DataError(ValueError):
    """Unusable input data; the message names the file (and line when there is one)."""


class DataFormat(StrEnum):
    sequences = "sequences"
    movielens = "movielens"
    events = "events"


def parse_sequences(lines: Iterable[str], source: str = "<sequences>") -> RawSequences:
    """Parse ``user item_1 … item_n`` lines; blank lines are skipped.

    Raises:
        DataError: a line with a user but no items, or a user listed twice.
    """
    sequences: RawSequences = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{source}:{number}: user {fields[0]!r} has no items")
        if fields[0] in sequences:
            raise DataError(f"{source}:{number}: user {fields[0]!r} appears on more than one line")
        sequences[fields[0]] = fields[1:]
    return sequences


def parse_movielens(lines: Iterable[str], source: str = "<ratings.dat>") -> RawSequences:
    """Parse ``UserID::MovieID::Rating::Timestamp`` lines, sorted by (timestamp, item id).

    Raises:
        DataError: a line without four ``::`` fields or with non-integer ids/timestamp.
    """
    rows: dict[str, list[tuple[int, int]]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split("::")
        if len(fields) != 4:
            raise DataError(f"{source}:{number}: expected UserID::MovieID::Rating::Timestamp")
        try:
            item, timestamp = int(fields[1]), int(fields[3])
        except ValueError:
            raise DataError(f"{source}:{number}: MovieID and Timestamp must be integers") from None
        rows.setdefault(fields[0].strip(), []).append((timestamp, item))
    return {user: [str(item) for _, item in sorted(events)] for user, events in rows.items()}


def _timestamp(value: object, source: str, row: int) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    text = str(value).strip() if value is not None else ""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise DataError(f"{source}:{row}: unparsable timestamp {text!r}") from None


def parse_events(
    rows: Iterable[dict[str, object]], source: str, first_row: int = 2
) -> RawSequences:
    """Group ``user_id,item_id,timestamp`` records by user, sorted by time (stable for ties).

    Args:
        rows: records with at least the three columns.
        source: file name for error messages.
        first_row: line/row number of the first record (2 for a CSV with a header).
    """
    events: dict[str, list[tuple[float, str]]] = {}
    for number, row in enumerate(rows, start=first_row):
        user, item = row.get("user_id"), row.get("item_id")
        if user is None or item is None or str(user).strip() == "" or str(item).strip() == "":
            raise DataError(f"{source}:{number}: empty user_id or item_id")
        when = _timestamp(row.get("timestamp"), source, number)
        events.setdefault(str(user).strip(), []).append((when, str(item).strip()))
    # sorted() is stable, so equal timestamps keep the log's order.
    return {user: [i for _, i in sorted(evs, key=lambda e: e[0])] for user, evs in events.items()}


def _check_columns(columns: Iterable[str], source: str) -> None:
    missing = [c for c in EVENT_COLUMNS if c not in set(columns)]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; need {list(EVENT_COLUMNS)}")


def read_events(path: Path) -> RawSequences:
    """Read a CSV (header row) or Parquet event log."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise DataError(
                f"{path}: {missing_train_extra('pyarrow', 'reading Parquet')}"
            ) from None
        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several unrelated types for bad files
            raise DataError(f"{path}: not a readable Parquet file ({error})") from None
        _check_columns(table.column_names, str(path))
        return parse_events(table.select(list(EVENT_COLUMNS)).to_pylist(), str(path), 1)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _check_columns(reader.fieldnames or [], str(path))
        return parse_events(reader, str(path))


def read_raw(path: Path, data_format: DataFormat | str) -> RawSequences:
    """Read ``path`` in the given format; raises :class:`DataError` on any problem."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        kind = DataFormat(data_format)
    except ValueError:
        known = ", ".join(f.value for f in DataFormat)
        raise DataError(f"{path}: unknown format {data_format!r}; use one of {known}") from None
    try:
        if kind is DataFormat.events:
            sequences = read_events(path)
        else:
            parse = parse_sequences if kind is DataFormat.sequences else parse_movielens
            with path.open(encoding="utf-8") as handle:
                sequences = parse(handle, str(path))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not sequences:
        raise DataError(f"{path}: no events found")
    return sequences


def filter_min_count(sequences: RawSequences, min_count: int) -> RawSequences:
    """Drop items, then users, with fewer than ``min_count`` events, until both hold (k-core).

    On ML-1M one pass suffices, matching the official single pass (reference A5). Dropped
    counts are logged; ``min_count <= 1`` returns the input unchanged.
    """
    if min_count <= 1:
        return sequences
    current = sequences
    while True:
        counts = Counter(item for items in current.values() for item in items)
        rare = {item for item, count in counts.items() if count < min_count}
        kept = {u: [i for i in items if i not in rare] for u, items in current.items()}
        kept = {u: items for u, items in kept.items() if len(items) >= min_count}
        dropped_events = sum(map(len, current.values())) - sum(map(len, kept.values()))
        if dropped_events == 0:
            return kept
        logger.info(
            "min-count %d: dropped %d items, %d users, %d events",
            min_count,
            len(rare),
            len(current) - len(kept),
            dropped_events,
        )
        current = kept


def id_sort_key(item_id: str) -> tuple[int, int, str]:
    # Numeric ids sort numerically, so ML-1M's dense ids 1..3416 map to themselves.
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


@dataclass(frozen=True)
class Dataset:
    """Dense, time-ordered sequences: ``sequences[u]`` holds item indices 1..n_items."""

    users: list[str]
    sequences: list[np.ndarray]
    item_ids: list[str]
    """External id of item index ``i`` at position ``i - 1``."""

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_events(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def encode(sequences: RawSequences) -> Dataset:
    """Dense re-indexing: items numbered 1..n in id order (numeric ids numerically)."""
    if not sequences:
        raise DataError("no users left after filtering")
    item_ids = sorted({i for items in sequences.values() for i in items}, key=id_sort_key)
    index = {item_id: position for position, item_id in enumerate(item_ids, start=1)}
    users = sorted(sequences, key=id_sort_key)
    encoded = [np.fromiter((index[i] for i in sequences[u]), dtype=np.int64) for u in users]
    return Dataset(users, encoded, item_ids)


def fingerprint(dataset: Dataset) -> str:
    """Content hash of the encoded data (users, vocabulary, sequences): identifies a run's data."""
    digest = hashlib.sha256()
    digest.update("\n".join(dataset.users).encode())
    digest.update(b"\0" + "\n".join(dataset.item_ids).encode())
    for sequence in dataset.sequences:
        digest.update(b"\0" + sequence.astype("<i8").tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Leave-one-out: ``train[u]`` = all but the last two, then validation, then test targets.

    Users with fewer than 3 events train on everything and have target 0 (no evaluation).
    """

    train: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray

    def history(self, user: int, include_valid: bool) -> np.ndarray:
        """The input history for validation (train) or test (train + validation target)."""
        if include_valid and self.valid[user] > 0:
            return np.append(self.train[user], self.valid[user])
        return self.train[user]


def split_leave_one_out(sequences: list[np.ndarray]) -> Split:
    """Last item → test, second last → validation, the rest → training."""
    train, valid, test = [], [], []
    for sequence in sequences:
        if len(sequence) < 3:
            train.append(sequence)
            valid.append(0)
            test.append(0)
        else:
            train.append(sequence[:-2])
            valid.append(int(sequence[-2]))
            test.append(int(sequence[-1]))
    return Split(train, np.array(valid, dtype=np.int64), np.array(test, dtype=np.int64))


def load_dataset(path: Path, data_format: DataFormat | str, min_count: int) -> Dataset:
    """Read, filter and encode; logs the statistics."""
    raw = read_raw(path, data_format)
    filtered = filter_min_count(raw, min_count)
    if not filtered:
        raise DataError(f"{path}: no users left after min-count {min_count} filtering")
    dataset = encode(filtered)
    logger.info(
        "%s: %d users, %d items, %d events",
        path,
        len(dataset.users),
        dataset.n_items,
        dataset.n_events,
    )
    return dataset


def encode_with_vocabulary(sequences: RawSequences, item_ids: list[str]) -> Dataset:
    """Encode with an existing vocabulary (an artifact's); unknown items are dropped and counted."""
    index = {item_id: position for position, item_id in enumerate(item_ids, start=1)}
    users = sorted(sequences, key=id_sort_key)
    encoded, unknown = [], 0
    for user in users:
        known = [index[i] for i in sequences[user] if i in index]
        unknown += len(sequences[user]) - len(known)
        encoded.append(np.array(known, dtype=np.int64))
    if unknown:
        logger.warning("dropped %d events whose item is not in the vocabulary", unknown)
    return Dataset(users, encoded, list(item_ids))
