"""Property-based fuzzing of every operation in ``/openapi.json`` against a real
``lrurec serve`` (embedded Redis, demo model) with schemathesis: no 5xx, every answer as
documented (status, content type, headers, body schema), invalid requests rejected, valid ones
accepted, and the stateful links between operations followed."""

import re
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import lrurec_serve

EXAMPLES_PER_OPERATION = 150
"""With the coverage and stateful phases, about 1,000 requests."""


def test_every_operation_conforms_to_its_schema(tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    with lrurec_serve() as server:
        command = [
            str(schemathesis), "run", f"{server.base_url}/openapi.json",
            "--checks", "all", "--max-examples", str(EXAMPLES_PER_OPERATION),
            "--seed", "1", "--workers", "1", "--request-timeout", "10",
            "--suppress-health-check", "too_slow",
        ]  # fmt: skip
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output[-2000:]
    assert int(generated.group(1)) >= 1000, output[-2000:]
    assert re.search(r"Tested: 8\b", output), output[-2000:]
