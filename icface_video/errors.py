"""Error types and the process exit codes they map to.

Every failure the command line reports is one of these; the CLI prints
``icface-video: error: <message>`` on one line and exits with ``exit_code``.

Exit codes (documented in the README):

* 0 success
* 1 other failure (:class:`IcfaceError`)
* 2 usage error (bad option, bad value; Click's own usage errors also exit 2)
* 3 input problem (:class:`InputError`): missing/unreadable/corrupt file, no face, ...
* 4 ``batch`` only: some jobs failed; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3


class IcfaceError(Exception):
    """Base error; exit code 1."""

    exit_code = EXIT_FAILURE


class UsageError(IcfaceError):
    """A bad option or option value; exit code 2."""

    exit_code = EXIT_USAGE


class InputError(IcfaceError):
    """An input file that is missing, unreadable, corrupt or holds no usable face; exit code 3.

    The message should start with the file name, e.g. ``clip.mp4: no video stream``.
    """

    exit_code = EXIT_INPUT

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputError(IcfaceError):
    """An output that cannot be written (exists without --overwrite, unwritable folder); exit code 1."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
