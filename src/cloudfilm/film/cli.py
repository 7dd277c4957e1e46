"""``cloudfilm film STUDY_UID --layout 4x5 ...``: compose a film sheet, store it, export it.

Registered in ``cloudfilm.cli``. Heavy imports happen inside the command so that
``cloudfilm --help`` stays fast. Exit codes as ``cloudfilm.cli``: 1 when the study, a series
or an image is missing or the sheet cannot be made; 2 on a usage error (a bad layout, film
size, window or option).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cloudfilm.cli_options import DataDir

__all__ = ["film_command"]

console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def _image(value: str) -> dict[str, Any]:
    """``SOP_UID`` or ``SOP_UID:FRAME``."""
    uid, _, frame = value.partition(":")
    if frame and not frame.isdigit():
        raise _fail(f"--image {value!r}: the frame after ':' must be a number", 2)
    return {"sop_instance_uid": uid, "frame": int(frame) if frame else 1}


def _window(value: str) -> dict[str, float]:
    """``CENTER,WIDTH``."""
    parts = value.split(",")
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise _fail(f"--window {value!r} is not CENTER,WIDTH (e.g. 40,400)", 2) from None
    return {"center": center, "width": width}


def film_command(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    layout: Annotated[
        str,
        typer.Option(
            "--layout", help="4x5 (columns x rows), or STANDARD\\C,R, ROW\\R1,R2... COL\\C1,C2..."
        ),
    ],
    series: Annotated[
        str | None, typer.Option("--series", help="Images evenly spaced through this series.")
    ] = None,
    first: Annotated[
        bool, typer.Option("--first", help="With --series: its first images, not evenly spaced.")
    ] = False,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="An image by hand: SOP_UID or SOP_UID:FRAME (repeat)."),
    ] = None,
    key_object: Annotated[
        str | None,
        typer.Option("--key-object", help="Key images of this KOS (SOP UID) or 'latest'."),
    ] = None,
    size: Annotated[
        str | None, typer.Option("--size", help="Film Size ID, e.g. 14INX17IN, 11INX14IN, A3.")
    ] = None,
    orientation: Annotated[
        str | None, typer.Option("--orientation", help="PORTRAIT or LANDSCAPE.")
    ] = None,
    window: Annotated[
        str | None, typer.Option("--window", help="Window CENTER,WIDTH, e.g. -600,1500.")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="Window preset: lung, mediastinum, bone, brain, abdomen."),
    ] = None,
    annotations: Annotated[
        bool, typer.Option("--annotations/--no-annotations", help="Patient text, letters, scale.")
    ] = True,
    dpi: Annotated[int | None, typer.Option("--dpi", help="Resolution (72-300).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the sheet to this .pdf or .png.")
    ] = None,
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """Compose a film sheet from a study, store it in the study and optionally export it."""
    from pydantic import ValidationError

    from cloudfilm import cli
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.film.routes import FilmBody, film_request
    from cloudfilm.film.sheets import film_image, sheet_pdf, sheet_png, store_film

    if out is not None and out.suffix.lower() not in (".pdf", ".png"):
        raise _fail(f"--out {out} must end in .pdf or .png", 2)
    fields: dict[str, Any] = {
        "layout": layout,
        "film_size": size,
        "orientation": orientation,
        "images": [_image(v) for v in image] if image else None,
        "series": series,
        "evenly": not first,
        "key_object": key_object,
        "window": _window(window) if window else None,
        "preset": preset,
        "annotations": annotations,
        "dpi": dpi,
    }
    archive = cli._open(data_dir)
    try:
        request = film_request(FilmBody.model_validate(fields), archive.settings)
        stored = store_film(archive, study_uid, request)
        if out is not None:
            film = film_image(archive, study_uid, stored.sop_instance_uid)
            data = (
                sheet_pdf(film.image, film.width_mm, film.height_mm)
                if out.suffix.lower() == ".pdf"
                else sheet_png(film.image, film.dpi)
            )
            out.write_bytes(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise _fail(f"invalid options: {problems}", 2) from exc
    except CloudFilmError as exc:
        raise _fail(exc.message, 2 if exc.status == 400 else 1) from exc
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}", 2) from exc
    finally:
        archive.close()
    if json_out:
        print(json.dumps(asdict(stored), ensure_ascii=False, indent=2))
        return
    console.print(
        f"film sheet {stored.sop_instance_uid} stored in study {stored.study_uid} "
        f"({stored.images} images, {stored.source})",
        highlight=False,
        soft_wrap=True,
    )
    for note in stored.notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)
    if out is not None:
        console.print(f"written to {out}", highlight=False)
