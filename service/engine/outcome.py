"""The outcome of one applied event, kept apart from its two serialisations (JSON, pydantic)."""

from dataclasses import dataclass

import orjson

from service.schemas import EventResult, Reason, ScoredItem

Ranked = list[tuple[str, float]]
"""``(external item id, score)`` pairs, best first."""


@dataclass(frozen=True, slots=True)
class Ranking:
    """What an event asks back: its top ``k`` (0: nothing), and whether the user's seen items
    are left out of it (which needs the history read)."""

    k: int
    exclude_seen: bool


@dataclass(slots=True)
class Applied:
    """One event's outcome, serialised by the caller.

    Building the pydantic :class:`EventResult` (with one ``ScoredItem`` per recommendation) and
    dumping it measured ~60 µs per event, more than the model step; ``POST /events`` writes
    :meth:`json` (same document as ``EventResult.model_dump_json(exclude_none=True)``) instead.
    """

    user_id: str
    reason: Reason | None
    events_applied: int
    model_version: str
    recommendations: Ranked | None

    def json(self) -> bytes:
        """The :class:`EventResult` JSON document, ``None`` fields left out."""
        body: dict[str, object] = {"user_id": self.user_id, "applied": self.reason is None}
        if self.reason is not None:
            body["reason"] = self.reason
        body["events_applied"] = self.events_applied
        body["model_version"] = self.model_version
        if self.recommendations is not None:
            body["recommendations"] = [
                {"item_id": item, "score": score} for item, score in self.recommendations
            ]
        return orjson.dumps(body)

    def result(self) -> EventResult:
        items = self.recommendations
        return EventResult(
            user_id=self.user_id,
            applied=self.reason is None,
            reason=self.reason,
            events_applied=self.events_applied,
            model_version=self.model_version,
            recommendations=None if items is None else [scored(i, s) for i, s in items],
        )


def scored(item: str, score: float) -> ScoredItem:
    """One ranked item as its response model."""
    return ScoredItem(item_id=item, score=score)
