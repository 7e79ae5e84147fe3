"""The project's own error types: each message says what is wrong and what to do about it."""


class CifarkitError(Exception):
    """Base class: the CLI prints the message of any of these and exits non-zero, without a traceback."""


class DatasetError(CifarkitError):
    """Anything wrong with finding, downloading, verifying, extracting or parsing a dataset."""


class ConfigError(CifarkitError):
    """A recipe, an override or a combination of options that cannot work."""


class CheckpointError(CifarkitError):
    """A checkpoint that is missing, corrupt, or would run code when loaded."""


class ImageError(CifarkitError):
    """A file given for prediction that is not a usable image (reported per file)."""


class OutputError(CifarkitError):
    """A place to write results that cannot be used (not writable, a file where a folder should be...)."""


class NonFiniteModelError(CifarkitError):
    """A model whose outputs are NaN or infinite (a diverged run): it is refused, never shown as an answer."""


def non_finite_model(name: str, bad: int, total: int) -> NonFiniteModelError:
    return NonFiniteModelError(
        f"{name} gives outputs that are not finite numbers (NaN or infinity) for {bad} of {total} pictures: its "
        "weights are broken (a run that diverged?). Use another model, or train again with a lower optim.lr")
