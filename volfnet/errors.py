"""The one exception type for problems a user can fix (bad data, bad paths, bad options).

Library code raises :class:`VolfnetError` with a message that names the file (or option)
and says what is wrong; the console scripts print that message without a traceback.
Programming errors keep their ordinary Python exception types.
"""

from __future__ import annotations


class VolfnetError(Exception):
    """A problem with the user's input that the user can fix."""


class DataIntegrityError(VolfnetError):
    """One or more problems found in a raw dataset; ``problems`` lists each with its file."""

    def __init__(self, problems: list[str], header: str = "dataset integrity check failed") -> None:
        self.problems = list(problems)
        self.header = header
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header} ({len(self.problems)} problem(s)):\n{lines}")

    def __reduce__(self):
        # Keep problems and header when the error crosses a process boundary.
        return (type(self), (self.problems, self.header))
