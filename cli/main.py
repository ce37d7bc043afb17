"""The ``lrurec`` command: one typer app; each package contributes its commands here."""

import typer

app = typer.Typer(
    help="LRURec real-time sequential recommendation: train, evaluate and serve.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Command registrations (one line per command; keep this file a thin composition root).
from cli.consume_command import consume  # noqa: E402
from cli.events_command import app as events_app  # noqa: E402
from cli.publish_command import publish_command  # noqa: E402
from cli.serve_command import serve  # noqa: E402
from training.cli import evaluate, train  # noqa: E402

app.command("train")(train)
app.command("evaluate")(evaluate)
app.command("serve")(serve)
app.command("consume")(consume)
app.add_typer(events_app, name="events")
app.command("publish")(publish_command)
