"""The one exception type that means "the user asked for something invalid", and the check for the
pipeline's optional packages.

The CLI turns it into a single line on stderr and exit status 2; anything else is a bug and keeps
its traceback.
"""

import contextlib
from pathlib import Path
from typing import Iterator


class DvtError(Exception):
    """Bad input: an unknown name, an impossible value, a missing or corrupt file."""


class ConfigError(DvtError):
    """A params.yaml key, type or value that is not allowed."""


def pipeline_module(name: str, *, needed_for: str):
    """Import `name`, one of the pipeline's packages (DVC, DVCLive, Snakemake: the `pipeline` extra), or
    say in one line how to install it. The model library (dvt.models) needs none of them."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        top = name.split(".")[0]
        raise DvtError(f"{needed_for} needs {top}, which is not installed: pip install 'dvt[pipeline]' "
                       "(make install has it)") from None


@contextlib.contextmanager
def damaged(path: Path, rerun: str) -> Iterator[None]:
    """Reading a stage output that does not parse as what its stage writes (a truncated CSV, a JSON
    without its keys) becomes one DvtError line naming the file and the command that writes it again.
    (pandas' ParserError and UnicodeDecodeError are ValueErrors.)"""
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise DvtError(f"{path} is damaged ({reason}); rerun `{rerun}`") from None
