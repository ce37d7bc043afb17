"""deploy/k8s: the shared models volume is mounted where the pods and the retrain CronJob expect
it, and the CronJob's own script, run here against a real Redis, exports the event log, trains
(cold the first time, warm from the newest model after), and publishes."""

import asyncio
import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from service.store import create_redis
from service.store.event_log import EventLog, LogEntry

pytestmark = pytest.mark.slow


def _documents(repo: Path, name: str) -> dict[str, Any]:
    (document,) = yaml.safe_load_all((repo / "deploy" / "k8s" / name).read_text(encoding="utf-8"))
    return dict(document)


def _pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    spec = document["spec"]
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def _models_mount(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    return mount, volume


def test_pods_read_and_the_retrain_job_writes_one_read_write_many_claim(repo: Path) -> None:
    claim = _documents(repo, "models-pvc.yaml")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    name = claim["metadata"]["name"]
    mount, volume = _models_mount(_pod_spec(_documents(repo, "deployment.yaml")))
    assert volume["persistentVolumeClaim"]["claimName"] == name
    assert mount["mountPath"] == "/models"
    assert mount["readOnly"] is True
    mount, volume = _models_mount(_pod_spec(_documents(repo, "retrain-cronjob.yaml")))
    assert volume["persistentVolumeClaim"]["claimName"] == name
    assert mount["mountPath"] == "/models"
    assert not mount.get("readOnly", False)


def _script(repo: Path) -> str:
    (container,) = _pod_spec(_documents(repo, "retrain-cronjob.yaml"))["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    return str(container["args"][0])


def _log_events(url: str, users: int, events: int) -> None:
    """What the service logs while it serves: ``events`` per user over 40 items."""
    rng = random.Random(0)

    async def main() -> None:
        client = create_redis(url, 5.0, 2, 4)
        log = EventLog(client, "lrurec", shards=16, maxlen=100_000)
        entries = [
            LogEntry(f"u{user}", str(rng.randrange(1, 41)), f"e{user}-{n}", 1.7e9 + n, "seed")
            for user in range(users)
            for n in range(events)
        ]
        await log.append_many(entries)
        await client.aclose()

    asyncio.run(main())


def _run_job(
    script: str, tool: Callable[[str], Path], models: Path, redis_url: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PATH": f"{tool('lrurec').parent}{os.pathsep}{os.environ['PATH']}",
        "MODELS_DIR": str(models),
        "RETRAIN_MAX_MINUTES": "0.1",
        "LRUREC_REDIS_URL": redis_url,
    }
    done = subprocess.run(
        ["/bin/sh", "-c", script], env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_retrain_script_exports_trains_warm_and_publishes(
    repo: Path,
    tool: Callable[[str], Path],
    tmp_path: Path,
    redis_url: str,
    redis_client: "redis.Redis",
) -> None:
    _log_events(redis_url, users=60, events=8)
    script = _script(repo)
    _run_job(script, tool, tmp_path, redis_url)
    (first,) = sorted(path for path in tmp_path.iterdir() if path.is_dir())
    current = json.loads(redis_client.get("lrurec:model:current") or b"{}")
    assert current["path"] == str(first)
    assert (first / "model.safetensors").is_file()

    second_run = _run_job(script, tool, tmp_path, redis_url)
    models = sorted(path for path in tmp_path.iterdir() if path.is_dir())
    assert len(models) == 2, second_run.stdout
    assert not [path for path in models if path.name.endswith(".partial")]
    newest = models[-1]
    current = json.loads(redis_client.get("lrurec:model:current") or b"{}")
    assert current["path"] == str(newest)
    config = json.loads((newest / "config.json").read_text(encoding="utf-8"))
    assert config["init_from"]["path"] == str(first)  # warm: from the first model's weights
    assert len(list(tmp_path.glob("events-*.parquet"))) == 2
