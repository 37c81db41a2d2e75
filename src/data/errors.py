"""Errors that say which path is wrong, what belongs there and how to get it."""

from pathlib import Path

from PIL import Image


class DataRootError(FileNotFoundError):
    """A data root is missing or does not hold the expected layout."""


class CorruptFileError(OSError):
    """A data file exists but cannot be decoded."""


def require_dir(path: Path, what: str, how: str) -> None:
    """Raise DataRootError unless `path` is a directory; `what` belongs there, `how` gets it."""
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise DataRootError(f"{path} {state}; expected {what} there. {how}")


def open_image(path: str, mode: str | None = "RGB") -> Image.Image:
    """Decode an image fully (converted to `mode` unless None); a failure names the file."""
    try:
        with Image.open(path) as image:
            return image.convert(mode) if mode else image.copy()
    # PIL reports bad data as OSError, SyntaxError or ValueError depending on the codec.
    except Exception as e:
        raise CorruptFileError(f"cannot decode image file {path}: {e}") from e
