"""The whole loop through real processes: ``lrurec serve --workers 2`` serves model A on a real
Redis and logs the events it applies; ``lrurec events export`` writes them out; ``lrurec
train`` trains model B on the export for a few steps; ``lrurec publish`` records B; within
30 s every worker serves B, while a client posts events the whole time and gets only 2xx."""

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.service.conftest import lrurec_serve
from tests.service.open_loop import ITEMS

USERS = 20


def lrurec(*arguments: str, env: dict[str, str] | None = None) -> str:
    command = [sys.executable, "-c", "from cli.main import app; app()", *arguments]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class Poster(threading.Thread):
    """Posts an event every 10 ms until stopped; remembers every status and model version."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.stopped = threading.Event()
        self.answers: list[tuple[float, int, str]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            n = 0
            while not self.stopped.is_set():
                event = {"user_id": f"u{n % USERS}", "item_id": ITEMS[n % len(ITEMS)]}
                response = client.post("/events", json=event, params={"k": 3})
                version = response.json().get("model_version", "") if response.is_success else ""
                self.answers.append((time.monotonic(), response.status_code, version))
                n += 1
                time.sleep(0.01)


@pytest.mark.slow
def test_serve_export_train_publish_and_every_worker_switches(
    redis_url: str, tmp_path: Path
) -> None:
    environment = {"LRUREC_MODEL_POLL_SECONDS": "1"}
    options = ("--redis-url", redis_url, "--workers", "2")
    with lrurec_serve(*options, environment=environment) as server:
        model_a = httpx.get(f"{server.base_url}/readyz").json()["model_version"]
        for n in range(600):  # the history B will be trained on
            event = {"user_id": f"u{n % USERS}", "item_id": ITEMS[(n * 7 + n // USERS) % 40],
                     "event_id": f"seed-{n}"}  # fmt: skip
            assert httpx.post(f"{server.base_url}/events", json=event).status_code == 200

        poster = Poster(server.base_url)
        poster.start()
        export = tmp_path / "events.parquet"
        exported = lrurec("events", "export", "--redis-url", redis_url, "--out", str(export))
        count = int(re.search(r": ([\d,]+) events", exported).group(1).replace(",", ""))  # type: ignore[union-attr]
        assert count >= 600  # the seeded events, and the poster's so far
        lrurec("train", "--data", str(export), "--format", "events", "--out", str(tmp_path / "b"),
               "--min-count", "1", "--max-steps", "5", "--eval-every", "5", "--threads", "1",
               "--quiet")  # fmt: skip
        artifact_b = tmp_path / "b"  # the run directory is the serving artifact
        published = time.monotonic()
        lrurec("publish", "--artifact", str(artifact_b), "--redis-url", redis_url)

        def all_on_b() -> bool:
            recent = [version for _, _, version in poster.answers[-40:]]
            return len(recent) == 40 and len(set(recent)) == 1 and recent[0] != model_a

        deadline = published + 30
        while not all_on_b():
            assert time.monotonic() < deadline, "not every worker serves B within 30 s"
            time.sleep(0.1)
        switched = time.monotonic() - published
        time.sleep(1.0)
        poster.stopped.set()
        poster.join()

        statuses = {status for _, status, _ in poster.answers}
        assert statuses == {200}, statuses  # nothing failed during the switch
        model_b = poster.answers[-1][2]
        readiness = {httpx.get(f"{server.base_url}/readyz").json()["model_version"]
                     for _ in range(20)}  # fmt: skip
        assert readiness == {model_b}
        recommended = httpx.get(f"{server.base_url}/recommendations/u1").json()
        assert recommended["model_version"] == model_b
        assert switched < 30
        print(f"publish -> every worker on B: {switched:.1f} s; {len(poster.answers)} events, "  # noqa: T201
              "all 200")  # fmt: skip
