"""``lrurec train`` and ``lrurec evaluate``: parse options, call the pipeline, print results."""

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from training.config import ModelSpec, TrainConfig
from training.data import (
    DataError,
    DataFormat,
    Dataset,
    RawSequences,
    filter_min_count,
    load_dataset,
    read_raw,
)
from training.pipeline import TrainJob, evaluate_artifact, train_artifact
from training.warm_start import (
    WarmStartError,
    check_compatible,
    extended_dataset,
    load_seed,
    model_spec,
)

DataOption = Annotated[Path, typer.Option("--data", help="Input file.", show_default=False)]
FormatOption = Annotated[
    DataFormat,
    typer.Option(
        "--format",
        help="sequences: 'user item1 item2 ...' per line; movielens: ratings.dat; "
        "events: CSV or Parquet with user_id,item_id,timestamp.",
    ),
]
MinCountOption = Annotated[
    int | None,
    typer.Option(
        "--min-count",
        help="Drop users/items with fewer events (k-core). Default: 5, or 1 (off) for sequences.",
    ),
]

# The options' defaults are the configs' own, so `lrurec train` with no flags is TrainConfig().
_SPEC: dict[str, Any] = {name: field.default for name, field in ModelSpec.model_fields.items()}
_TRAIN: dict[str, Any] = {name: field.default for name, field in TrainConfig.model_fields.items()}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("training").setLevel(logging.INFO)


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Also append the ``training`` package's log records to ``path`` (the run's log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package = logging.getLogger("training")
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        handler.close()


def _load(data: Path, data_format: DataFormat, min_count: int | None) -> Dataset:
    default = 1 if data_format is DataFormat.sequences else 5
    try:
        return load_dataset(data, data_format, default if min_count is None else min_count)
    except DataError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


def _load_raw(data: Path, data_format: DataFormat, min_count: int | None) -> RawSequences:
    default = 1 if data_format is DataFormat.sequences else 5
    try:
        raw = filter_min_count(
            read_raw(data, data_format), default if min_count is None else min_count
        )
    except DataError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    if not raw:
        typer.secho(f"error: {data}: no events left after filtering", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    return raw


def _echo_table(metrics: dict[str, Any]) -> None:
    rows = [("model", metrics["test"]), ("popularity", metrics["baselines"]["popularity"])]
    typer.echo(f"{'scorer':<11}{'protocol':<9}  ndcg@10 recall@10  ndcg@20 recall@20   mrr@10")
    for name, by_protocol in rows:
        for protocol, values in by_protocol.items():
            numbers = " ".join(
                f"{values[key]:8.4f}"
                for key in ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr@10")
            )
            typer.echo(f"{name:<11}{protocol:<9} {numbers}")


def train(
    data: DataOption,
    out: Annotated[
        Path, typer.Option("--out", help="Artifact directory (also holds checkpoints).")
    ],
    data_format: FormatOption = DataFormat.sequences,
    min_count: MinCountOption = None,
    model: Annotated[
        str, typer.Option(help="Registered model type: lrurec, recblr, sasrec.")
    ] = _SPEC["model_type"],
    d_model: Annotated[
        int, typer.Option(help="Model width; a user's stored state grows with it.")
    ] = _SPEC["d_model"],
    n_layers: Annotated[int, typer.Option(help="Number of blocks.")] = _SPEC["n_layers"],
    dropout: Annotated[float, typer.Option(help="Dropout (paper grid 0.2-0.8).")] = _SPEC[
        "dropout"
    ],
    max_len: Annotated[int, typer.Option(help="Maximum input length (ML-1M: 200).")] = _SPEC[
        "max_len"
    ],
    batch_size: Annotated[int, typer.Option(help="Windows per batch at the mean length.")] = _TRAIN[
        "batch_size"
    ],
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, eps 1e-9).")] = _TRAIN["lr"],
    schedule: Annotated[
        str, typer.Option(help="cosine (to 1 % of the peak over the budget) or constant.")
    ] = _TRAIN["schedule"],
    schedule_by: Annotated[
        str,
        typer.Option(
            help="Cosine horizon: time (--max-minutes), steps (--max-steps, else "
            "--horizon-epochs; deterministic), or auto: time when --max-minutes is given."
        ),
    ] = _TRAIN["schedule_by"],
    horizon_epochs: Annotated[
        int, typer.Option(help="Epochs the cosine spans when no step or time budget is given.")
    ] = _TRAIN["horizon_epochs"],
    warmup_steps: Annotated[
        int, typer.Option(help="Linear warm-up steps (at most a tenth of a step horizon).")
    ] = _TRAIN["warmup_steps"],
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = _TRAIN[
        "weight_decay"
    ],
    label_smoothing: Annotated[
        float, typer.Option(help="Cross-entropy label smoothing, 0 to <1 (0: off).")
    ] = _TRAIN["label_smoothing"],
    mask_seen_in_loss: Annotated[
        bool,
        typer.Option(
            help="Leave the items already in the window out of each position's softmax, as "
            "evaluation and serving leave a user's history out of the ranking."
        ),
    ] = _TRAIN["mask_seen_in_loss"],
    ema_decay: Annotated[
        float,
        typer.Option(
            help="Validate and export an exponential moving average of the weights with this "
            "decay per step, 0 to <1 (0: off, the raw weights)."
        ),
    ] = _TRAIN["ema_decay"],
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = _TRAIN[
        "max_steps"
    ],
    max_epochs: Annotated[int, typer.Option(help="Stop after this many epochs.")] = _TRAIN[
        "max_epochs"
    ],
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-clock budget, cumulative across resumes.")
    ] = _TRAIN["max_minutes"],
    eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = _TRAIN["eval_every"],
    patience: Annotated[int, typer.Option(help="Validations without improvement.")] = _TRAIN[
        "patience"
    ],
    seed: Annotated[int, typer.Option(help="Random seed.")] = _TRAIN["seed"],
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = _TRAIN["device"],
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = _TRAIN["threads"],
    precision: Annotated[
        str,
        typer.Option(
            help="Training arithmetic: bf16 (autocast: matrix products in bfloat16, weights "
            "and softmax in float32), fp32, or auto: bf16 where the CPU or GPU has native bf16."
        ),
    ] = _TRAIN["precision"],
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Warm start from this artifact: its architecture and weights, its vocabulary "
            "extended with the data's new items (fresh rows), e.g. yesterday's model on today's "
            "export. Needs far fewer steps than a cold start.",
            exists=True,
            file_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a model on an event log and write a serving artifact to --out.

    The defaults are the best recipe measured on MovieLens-1M; give --max-minutes and the cosine
    follows the clock. Re-running the same command resumes from the last checkpoint in
    --out/checkpoints. For several processes (data parallel, gloo on CPU, nccl on GPU):
    torchrun --standalone --nproc-per-node 2 -m cli train ...
    """
    _setup_logging()
    try:
        config = TrainConfig(
            model=ModelSpec(
                model_type=model,
                d_model=d_model,
                n_layers=n_layers,
                dropout=dropout,
                max_len=max_len,
            ),
            batch_size=batch_size,
            lr=lr,
            schedule=_literal(schedule, ("constant", "cosine"), "--schedule"),
            schedule_by=_literal(schedule_by, ("auto", "steps", "time"), "--schedule-by"),
            horizon_epochs=horizon_epochs,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            label_smoothing=label_smoothing,
            mask_seen_in_loss=mask_seen_in_loss,
            ema_decay=ema_decay,
            max_steps=max_steps,
            max_epochs=max_epochs,
            max_minutes=max_minutes,
            eval_every=eval_every,
            patience=patience,
            seed=seed,
            device=device,
            precision=_literal(precision, ("auto", "fp32", "bf16"), "--precision"),
            threads=threads,
        )
    except ValidationError as error:
        typer.secho(f"error: invalid option: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    warm = None
    if init_from is not None:
        try:
            warm = load_seed(init_from)
            spec = model_spec(warm).model_copy(update={"dropout": dropout})
            check_compatible(config.model, ModelSpec(), spec)
        except WarmStartError as error:
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        config = config.model_copy(update={"model": spec})
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 logs and reports
    with _log_to(out / "train.log") if main else nullcontext():
        if warm is None:
            dataset = _load(data, data_format, min_count)
        else:
            dataset = extended_dataset(warm, _load_raw(data, data_format, min_count))
        source = f"{data_format.value}:{data}"
        job = TrainJob(dataset, config, out, source, show_progress=not quiet, init_from=warm)
        metrics = train_artifact(job)
    if main:
        typer.echo(f"artifact written to {out} ({metrics['steps']} steps)")
        _echo_table(metrics)


def _literal(value: str, allowed: tuple[str, ...], option: str) -> Any:
    if value not in allowed:
        typer.secho(f"error: {option} must be one of {allowed}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    return value


def evaluate(
    artifact: Annotated[Path, typer.Option("--artifact", help="Artifact directory.")],
    data: DataOption,
    data_format: FormatOption = DataFormat.sequences,
    min_count: MinCountOption = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    output: Annotated[
        Path | None, typer.Option(help="Also write the metrics as JSON here.")
    ] = None,
) -> None:
    """Re-score an artifact on leave-one-out test targets (paper and serving protocols)."""
    _setup_logging()
    default = 1 if data_format is DataFormat.sequences else 5
    try:
        raw = filter_min_count(
            read_raw(data, data_format), default if min_count is None else min_count
        )
        metrics = evaluate_artifact(artifact, raw, device)
    except (DataError, FileNotFoundError, ValueError) as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    _echo_table(metrics)
    if output is not None:
        output.write_text(json.dumps(metrics, indent=2) + "\n")
