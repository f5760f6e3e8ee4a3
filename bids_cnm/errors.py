"""Errors that reach the user, each tied to a BIDS-Apps exit code.

The exit codes follow the BIDS Apps execution specification draft (which borrows
them from BSD ``sysexits.h``).  Every error message says what is wrong, where
(file, row, column when known) and what to do about it.
"""

from __future__ import annotations

import re

EX_USAGE = 64  # the command line was used incorrectly
EX_DATAERR = 65  # the input data was incorrect in some way
EX_NOINPUT = 66  # an input file did not exist or was not readable
EX_NOMATCH = 18  # the BIDS filters matched no file
EX_CANTCREAT = 73  # an output file cannot be created
EX_IOERR = 74  # an error occurred while doing I/O on some file


class CNMError(Exception):
    """Base class of the errors bids_cnm reports to the user.

    Parameters
    ----------
    message : str
        One line that says what is wrong and how to fix it.
    """

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CNMError):
    """The command line is inconsistent (exit code 64)."""

    exit_code = EX_USAGE


class InputDataError(CNMError):
    """An input file exists but its content is wrong (exit code 65)."""

    exit_code = EX_DATAERR


class MissingInputError(CNMError):
    """An input file or folder does not exist (exit code 66)."""

    exit_code = EX_NOINPUT


class NoMatchError(CNMError):
    """The BIDS query or the participant filters selected nothing (exit code 18)."""

    exit_code = EX_NOMATCH


class OutputError(CNMError):
    """An output cannot be created (exit code 73)."""

    exit_code = EX_CANTCREAT


class ReadError(CNMError):
    """An input file could not be read (exit code 74)."""

    exit_code = EX_IOERR


def where(path: object, row: int | None = None, column: str | None = None) -> str:
    """Format a location for an error message: ``file, row N, column 'c'``.

    Parameters
    ----------
    path : path-like
        The file.
    row : int, optional
        One-based row number as a person counts lines in the file (header is row 1).
    column : str, optional
        Column name.

    Returns
    -------
    str
        The location.
    """
    text = str(path)
    if row is not None:
        text += f", row {row}"
    if column is not None:
        text += f", column '{column}'"
    return text


#: a header cell that looks like a column name (not a line of some other file)
_COLUMN_NAME = re.compile(r"^[\w .()%+\-/]{1,40}$")


def found_columns(columns) -> str:
    """The columns a table was read with, for an error message, without echoing a file.

    A user may point at a file that is not a table at all (a password file, a binary);
    its first line would become the "column names".  Names are shown only when every one
    looks like a column name; otherwise only their number.
    """
    names = [str(c) for c in columns]
    if not names:
        return "no columns"
    if all(_COLUMN_NAME.match(n) for n in names):
        return ", ".join(names)
    return (f"{len(names)} column(s) whose names do not look like a table header "
            "(is it a tab-separated table with a header line?)")
