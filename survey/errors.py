"""User-facing errors: one line that names the bad input and what to do."""


class SurveyError(Exception):
    """An input problem the user can fix; the CLI prints it as one line and exits non-zero."""


class NotApplicable(SurveyError):  # noqa: N818 - a verdict on the data, not a failure
    """A method that does not apply to this data (a degenerate layer, too few points): stages store NULL and this
    one-line reason instead of failing the survey."""


def one_line(detail: object, limit: int = 200) -> str:
    """`detail` (an exception or text) with its whitespace and newlines collapsed, cut to `limit` characters."""
    text = " ".join(str(detail).split()) or type(detail).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
