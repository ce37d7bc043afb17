"""This worker's copy of the records it wrote last, so an event can skip the read round trip.

Every event used to cost two Redis round trips: read the record, then check-and-write it. When
this worker wrote a user's record last, it already knows what the read would return: the
record as it wrote it. The engine then steps from that copy and writes at once, with the
expected version *and* writer token (``Write.expected_token``), so the script still refuses a
write over anything it did not see; a refused write's reply carries the current record
(``UserStore.write(refresh=...)``), so a stale copy costs a model step, not an extra round
trip. The token check also catches a user deleted and written back up to the same version by
another process (a version number alone would match).

Memory: one record per user (state and hidden vectors, up to ``max_len`` recent item ids),
at most ``capacity`` users, least recently used dropped first.
"""

from collections import OrderedDict
from dataclasses import dataclass

from service.runtimes.protocol import IndexArray
from service.store import Snapshot, Write, WriteResult


@dataclass(frozen=True, slots=True)
class Cached:
    """A record as this worker wrote it, and the token it wrote it with."""

    snapshot: Snapshot
    token: str
    seen: IndexArray | None = None
    """The model's indices of the snapshot's history items (when loaded), in order."""


class StateCache:
    """Least-recently-used ``user id → Cached`` of at most ``capacity`` users (0 = off)."""

    def __init__(self, capacity: int, max_len: int) -> None:
        self._capacity = capacity
        self._max_len = max_len
        self._entries: OrderedDict[str, Cached] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str, history: bool) -> Cached | None:
        """The copy of ``user_id``'s record; None if absent or without a history needed."""
        entry = self._entries.get(user_id)
        if entry is None or (history and not entry.snapshot.history_loaded):
            return None
        self._entries.move_to_end(user_id)
        return entry

    def put(
        self, user_id: str, before: Snapshot, write: Write, result: WriteResult,
        seen: IndexArray | None = None,
    ) -> Snapshot:  # fmt: skip
        """Remember the record that ``write`` (applied to ``before``) left in Redis, and
        ``seen``, the model's indices of its history's items; that record (also when the
        cache is off, for a caller that writes again from it)."""
        history = before.history
        if write.item and before.history_loaded:
            history = [*history, write.item][-self._max_len :]
        after = Snapshot(  # every field named: a third of dataclasses.replace's cost
            version=result.version,
            state=write.state or before.state,
            hidden=write.hidden or before.hidden,
            model_version=write.model_version or before.model_version,
            events_applied=result.events_applied,
            events_received=before.events_received + int(write.received),
            updated_at=None,  # not tracked here; the stored record has it
            history=history,
            history_loaded=before.history_loaded,
            duplicate=False,
        )
        if not self._capacity:
            return after
        self._entries[user_id] = Cached(after, write.token, seen)
        self._entries.move_to_end(user_id)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return after

    def drop(self, user_id: str) -> None:
        self._entries.pop(user_id, None)
