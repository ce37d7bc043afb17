"""One ingest stream entry to an :class:`~service.schemas.Event`, with the checks of
``POST /events``, or the reason it is refused."""

from pydantic import ValidationError

from service.schemas import Event

FIELDS = ("user_id", "item_id", "event_id", "timestamp")


def parse_entry(entry_id: str, fields: dict[str, str]) -> Event | str:
    """The event of a stream entry, or why it is invalid (for the dead-letter stream).

    Stream values are strings, so ``timestamp`` is read as a number first. An entry without
    ``event_id`` gets its stream entry id, so a redelivered entry is not applied twice.
    """
    data: dict[str, object] = dict(fields)
    if "timestamp" in data:
        try:
            data["timestamp"] = float(fields["timestamp"])
        except ValueError:
            return f"timestamp: not a number: {fields['timestamp']!r}"
    data.setdefault("event_id", entry_id)
    try:
        return Event.model_validate(data)
    except ValidationError as error:
        return "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'entry'}: {problem['msg']}"
            for problem in error.errors()
        )
