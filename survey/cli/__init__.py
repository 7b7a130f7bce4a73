"""The `survey` command (Typer). Commands live by subject: running stages (surveying, demo), the catalogs
(catalog), the embedding spaces (search); what they share is in common. Each imports what it runs only when it
runs, so `survey sql` and `survey --help` start fast."""

from survey.cli import catalog, demo, search, surveying  # noqa: F401 - importing a module registers its commands
from survey.cli.common import DEFAULT_WAREHOUSE, ExecutorKind, app, exit_on_user_error

__all__ = ["DEFAULT_WAREHOUSE", "ExecutorKind", "app", "exit_on_user_error", "main"]


def main() -> None:
    """The `survey` entry point."""
    exit_on_user_error(app)
