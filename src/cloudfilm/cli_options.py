"""Options shared by every ``cloudfilm`` command module (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data folder (default: CLOUDFILM_DATA_DIR or ./cloudfilm-data)."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
