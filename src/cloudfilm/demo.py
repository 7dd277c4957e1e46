"""The demo: an embedded archive filled with synthetic studies, ready to browse."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.index.queries import StudyQuery, find_studies

logger = logging.getLogger(__name__)

#: (modality, slices or frames, charset, seed): one study per line, names in each charset.
DEMO_STUDIES = (
    ("CT", 120, "gb18030", 1),
    ("MR", 24, "ir58", 2),
    ("CR", 1, "utf8", 3),
    ("US", 20, "utf8", 4),
)


def prepare_demo(settings: Settings, console: Console) -> list[str]:
    """Generate and import the demo studies (once); return the lines to print."""
    from cloudfilm.dicom.synth import write_studies
    from cloudfilm.importer import ImportReport, collect, import_items

    source = settings.data_dir / "demo-source"
    with Archive.open(settings) as archive:
        with archive.sessions() as session:
            existing = find_studies(session, StudyQuery(limit=1))
        if not existing:
            console.print("generating demo studies (synthetic phantoms) ...")
            for modality, slices, charset, seed in DEMO_STUDIES:
                write_studies(
                    source / modality.lower(), seed=seed, modality=modality, slices=slices,
                    charset=charset,
                )  # fmt: skip
            report = import_items(archive, collect([source]), ImportReport())
            console.print(f"imported {report.counts['stored']} instances")
        with archive.sessions() as session:
            studies = find_studies(session, StudyQuery(limit=50))
    base = f"http://{settings.http_host}:{settings.http_port}"
    lines = ["", "[bold]cloudfilm demo[/bold]", f"data folder: {Path(settings.data_dir).resolve()}"]
    for s in studies:
        lines.append(
            f"  {s.patient_name or '(no name)'}  {'/'.join(s.modalities)}  "
            f"{s.description or ''}  {s.instances} images  study {s.study_uid}"
        )
    lines += [
        f"open {base}/health and {base}/metrics",
        "list studies: cloudfilm studies --data-dir " + str(settings.data_dir),
        "",
    ]
    return lines
