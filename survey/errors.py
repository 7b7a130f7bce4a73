"""User-facing errors: one line that names the bad input and what to do."""


class SurveyError(Exception):
    """An input problem the user can fix; the CLI prints it as one line and exits non-zero."""
