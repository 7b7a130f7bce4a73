"""What every row written by a run carries: the run's id and the code version."""

from __future__ import annotations

from dataclasses import dataclass

from survey import __version__


@dataclass(frozen=True)
class RunInfo:
    """One run of the survey: its id, the threads a unit may use, and the provenance columns of its rows."""

    run_id: str
    threads: int = 1
    code_version: str = __version__

    def provenance(self) -> dict[str, str]:
        return {"run_id": self.run_id, "code_version": self.code_version}
