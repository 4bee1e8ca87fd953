"""One exception type for bad user input, so the CLI can print one line and exit 2."""


class InputError(Exception):
    """A problem with a user-supplied file or value; the message names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # picklable, so errors raised in worker processes reach the CLI intact
        return (type(self), (self.path, self.problem))
