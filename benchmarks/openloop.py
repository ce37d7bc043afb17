"""Open-loop service benchmark (issue 5): a thin entry point to ``lrurec bench --service``.

The generator and sweep live in ``cli/bench`` so the installed ``lrurec`` command has them too.

    python -m benchmarks.openloop --workers 1,2 --plot benchmarks/service_latency.png
"""

import sys

from cli.main import app

if __name__ == "__main__":
    app(["bench", "--service", *sys.argv[1:]])
