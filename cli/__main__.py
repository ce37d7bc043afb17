"""``python -m cli`` runs the ``lrurec`` command (for launchers that take a module: torchrun)."""

from cli.main import app

app(prog_name="lrurec")
