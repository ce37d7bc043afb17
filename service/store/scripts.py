"""The Lua scripts, kept as ``.lua`` files beside this module.

``apply.lua`` checks the event id and the version, then writes everything at once: Redis runs a
script atomically, so a failure or a concurrent writer can never leave a half-applied event.
``load.lua`` reads everything an event needs in one round trip. The batch scripts run many of
those in one call on a single Redis: each is the per-event script wrapped as a local function,
followed by a driver (``*_batch.lua``), so one user's check-and-write has one source.
"""

from functools import cache
from importlib.resources import files


@cache
def script_text(name: str) -> str:
    """The source of ``<name>.lua``; a batch script (``APPLY_BATCH``, ``LOAD_BATCH``) is its
    per-event script as a local function, then its driver."""
    if name in BATCHED:
        one, function = BATCHED[name]
        return f"local function {function}(KEYS, ARGV)\n{script_text(one)}\nend\n{_read(name)}"
    return _read(name)


def _read(name: str) -> str:
    return files("service.store").joinpath(f"{name}.lua").read_text(encoding="utf-8")


APPLY = "apply"
"""Arguments: ``KEYS = user_keys(...)``; ``ARGV`` as :func:`service.store.records.write_args`."""
LOAD = "load"
"""Arguments: ``KEYS = user_keys(...)``; ``ARGV = [history '1'|'0', event id or '']``."""
APPLY_BATCH = "apply_batch"
"""Arguments as :meth:`service.store.UserStore.write_batch` packs them (layout in
apply_batch.lua)."""
LOAD_BATCH = "load_batch"
"""Arguments: ``KEYS`` = the users' state keys; no ``ARGV``."""

BATCHED = {APPLY_BATCH: (APPLY, "apply_one"), LOAD_BATCH: (LOAD, "load_one")}
"""Each batch script's per-event script and the local function it is wrapped as."""
