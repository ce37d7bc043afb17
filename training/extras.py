"""The optional ``train`` extra (matplotlib, pyarrow): imported only inside the functions that
need it, so a serving install (``pip install -e .``) imports this package without it."""

INSTALL_HINT = "pip install -e '.[train]'"


class MissingTrainExtraError(ImportError):
    """A feature needs a package of the ``train`` extra that is not installed."""


def missing_train_extra(package: str, feature: str) -> MissingTrainExtraError:
    """The error to raise (``from`` the ``ModuleNotFoundError``) when ``package`` is absent."""
    return MissingTrainExtraError(
        f"{feature} needs {package}, part of the 'train' extra: {INSTALL_HINT}"
    )
