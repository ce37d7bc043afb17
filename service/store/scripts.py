"""The two per-event Lua scripts, kept as ``.lua`` files beside this module.

``apply.lua`` checks the event id and the version, then writes everything at once: Redis runs a
script atomically, so a failure or a concurrent writer can never leave a half-applied event.
``load.lua`` reads everything an event needs in one round trip.
"""

from functools import cache
from importlib.resources import files


@cache
def script_text(name: str) -> str:
    """The source of ``<name>.lua``."""
    return files("service.store").joinpath(f"{name}.lua").read_text(encoding="utf-8")


APPLY = "apply"
"""Arguments: ``KEYS = user_keys(...)``; ``ARGV`` as :func:`service.store.records.write_args`."""
LOAD = "load"
"""Arguments: ``KEYS = user_keys(...)``; ``ARGV = [history '1'|'0', event id or '']``."""
