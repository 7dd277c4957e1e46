"""The figures of film saved: exams, film sheets captured and printed on film anyway, cloud
films issued, opened, downloaded and passed on to other hospitals, and the money saved — by
institution, modality or department, and by day, week or month (docs/film.md, "Figures of
film saved").

What is counted, and when (the event's time, in the ``figures_time_zone`` setting):

==========================  ===============================================================
measure                     counts
==========================  ===============================================================
exams                       studies, when they arrived in the archive (``Study.created_at``)
sheets_printed_to_cloud     sheets a modality printed to the virtual printer: stored in a
                            study (source ``print:<AE>``) or kept as an unmatched film
                            (``printed_film``; counted when printed, also once attached)
sheets_composed             sheets composed in cloudfilm (source ``film``)
sheets_captured             the two above
sheets_printed_on_film      copies printed on real film anyway (``film_print`` jobs
                            ``done``, when they finished)
cloud_films_issued          cloud films issued by staff or by the automatic rule (shares
                            without a parent)
cloud_films_opened          openings of a cloud film or of a reshare of it (``share_access``)
cloud_films_downloaded      downloads of originals through them (``share_access``)
reshares                    links a holder made from a cloud film for a doctor (shares with a
                            parent): the film passed on, usually to another hospital
studies_held_elsewhere      another institution sent the same exam in too and now holds it
                            (``study_access`` rows ``holder``)
shares_to_other_hospitals   reshares + studies_held_elsewhere
money_saved                 Σ over film sizes (sheets captured − sheets printed on film)
                            × the price of that size (``film_prices``, else
                            ``film_price_default``), in ``film_currency``
==========================  ===============================================================

Each counted thing is attributed to an **institution**, a **modality** and a **department**
through the study it belongs to (its *exam*): the institution that owns the study (the first
to send it), the modality of the study's first stored series, and the department of the known
peer whose AE sent the study's first instance (``dimse:<AE>``). A sheet printed to the
virtual printer takes the department of the AE that printed it, and an unmatched sheet the
institution of that AE (its modality is that of the study it was attached to, else none). A
cloud film takes its issuer's institution and the attributes of the first study it reaches
(by index key); its openings, downloads and reshares take the same. A film printed on real
film takes the institution recorded with the job. What is unknown is '' (shown "unspecified").

The counting is done by the database: one aggregate query per kind of thing, grouped by local
day and the attributes; the days are then folded into weeks (ISO, Monday first) and months,
and peer AE titles into their departments.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    SQLColumnExpression,
    String,
    Subquery,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import aliased

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.dimse.peers import PeerDirectory
from cloudfilm.index.models import (
    FilmPrint,
    Instance,
    Institution,
    PrintedFilm,
    Series,
    Share,
    ShareAccess,
    ShareStudy,
    Study,
    StudyAccess,
)

__all__ = [
    "GROUPS",
    "MEASURES",
    "PERIODS",
    "Figures",
    "FiguresQuery",
    "Period",
    "Prices",
    "compute_figures",
    "periods_between",
]

GROUPS = ("institution", "modality", "department")
PERIODS = ("day", "week", "month")
MEASURES = (
    "exams",
    "sheets_printed_to_cloud",
    "sheets_composed",
    "sheets_captured",
    "sheets_printed_on_film",
    "cloud_films_issued",
    "cloud_films_opened",
    "cloud_films_downloaded",
    "reshares",
    "studies_held_elsewhere",
    "shares_to_other_hospitals",
    "money_saved",
)
#: What each kind of counted thing adds to (``sheets_captured`` and the shares to other
#: hospitals are sums).
_KIND_MEASURES = {
    "exam": ("exams",),
    "printed": ("sheets_printed_to_cloud", "sheets_captured"),
    "composed": ("sheets_composed", "sheets_captured"),
    "on-film": ("sheets_printed_on_film",),
    "issued": ("cloud_films_issued",),
    "open": ("cloud_films_opened",),
    "download": ("cloud_films_downloaded",),
    "reshare": ("reshares", "shares_to_other_hospitals"),
    "holder": ("studies_held_elsewhere", "shares_to_other_hospitals"),
}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_Rows: TypeAlias = "Select[*tuple[Any, ...]]"  # a string: SQLAlchemy 2.0 has Select[tuple]
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class FiguresQuery:
    """Which figures: grouped by ``group``, per ``period``, over the local days ``start`` to
    ``end`` (both included) of ``zone``; only ``institution``'s (a code) unless None."""

    group: str
    period: str
    start: date
    end: date
    zone: str = "UTC"
    institution: str | None = None

    @property
    def utc_bounds(self) -> tuple[datetime, datetime]:
        """The first instant of ``start`` and of the day after ``end``, in UTC."""
        tz = ZoneInfo(self.zone)
        first = datetime.combine(self.start, time(), tz).astimezone(UTC)
        after = datetime.combine(self.end + timedelta(days=1), time(), tz).astimezone(UTC)
        return first, after


@dataclass(frozen=True)
class Prices:
    """Price of one sheet by Film Size ID, the price of any other size, and the currency."""

    by_size: dict[str, Decimal]
    default: Decimal
    currency: str

    @classmethod
    def of(cls, settings: Settings) -> Prices:
        return cls(
            {size: Decimal(str(price)) for size, price in settings.film_prices.items()},
            Decimal(str(settings.film_price_default)),
            settings.film_currency,
        )

    def of_size(self, film_size: str) -> Decimal:
        return self.by_size.get(film_size, self.default)


@dataclass(frozen=True)
class Period:
    """A day, an ISO week (Monday to Sunday) or a month: ``label`` (``2026-03-05``,
    ``2026-W10``, ``2026-03``) and its first and last day."""

    label: str
    start: date
    end: date


def _period_start(day: date, period: str) -> date:
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def _period_after(start: date, period: str) -> date:
    if period == "week":
        return start + timedelta(days=7)
    if period == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + timedelta(days=1)


def _label(start: date, period: str) -> str:
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return start.strftime("%Y-%m")
    return start.isoformat()


def periods_between(start: date, end: date, period: str) -> list[Period]:
    """The periods that overlap the days ``start`` to ``end``, in order; the first and the
    last keep their label but start and end within the range (a week from Wednesday)."""
    found = []
    first = _period_start(start, period)
    while first <= end:
        after = _period_after(first, period)
        last = after - timedelta(days=1)
        found.append(Period(_label(first, period), max(first, start), min(last, end)))
        first = after
    return found


class Counts:
    """The measures of one cell (a period and a group), with the sheets by film size."""

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(MEASURES[:-1], 0)
        #: Film Size ID ('' unknown) → [sheets captured, sheets printed on film].
        self.sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, kind: str, film_size: str, count: int) -> None:
        for measure in _KIND_MEASURES[kind]:
            self.values[measure] += count
        if kind in ("printed", "composed"):
            self.sizes[film_size][0] += count
        elif kind == "on-film":
            self.sizes[film_size][1] += count

    def merge(self, other: Counts) -> None:
        for measure, value in other.values.items():
            self.values[measure] += value
        for size, (captured, on_film) in other.sizes.items():
            self.sizes[size][0] += captured
            self.sizes[size][1] += on_film

    def money_saved(self, prices: Prices) -> Decimal:
        saved = sum(
            ((captured - on_film) * prices.of_size(size) for size, (captured, on_film) in
             self.sizes.items()),
            Decimal(0),
        )  # fmt: skip
        return saved.quantize(_CENT, ROUND_HALF_UP)

    def empty(self) -> bool:
        return not any(self.values.values())

    def as_dict(self, prices: Prices) -> dict[str, Any]:
        return {**self.values, "money_saved": float(self.money_saved(prices))}


@dataclass
class Figures:
    """The figures of a :class:`FiguresQuery`: a :class:`Counts` per (period label, group)."""

    query: FiguresQuery
    prices: Prices
    periods: list[Period]
    cells: dict[tuple[str, str], Counts] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        """The groups that have figures, sorted ('' — unspecified — last)."""
        return sorted({g for _, g in self.cells}, key=lambda g: (g == "", g))

    def cell(self, period: str, group: str) -> Counts:
        return self.cells.get((period, group)) or Counts()

    def by_period(self) -> Iterator[tuple[Period, Counts]]:
        for period in self.periods:
            total = Counts()
            for (label, _), counts in self.cells.items():
                if label == period.label:
                    total.merge(counts)
            yield period, total

    def by_group(self) -> Iterator[tuple[str, Counts]]:
        for group in self.groups:
            total = Counts()
            for (_, name), counts in self.cells.items():
                if name == group:
                    total.merge(counts)
            yield group, total

    def total(self) -> Counts:
        total = Counts()
        for counts in self.cells.values():
            total.merge(counts)
        return total

    def rows(self) -> Iterator[tuple[Period, str, Counts]]:
        """The cells that count something, by period then group."""
        groups = self.groups
        for period in self.periods:
            for group in groups:
                counts = self.cells.get((period.label, group))
                if counts is not None and not counts.empty():
                    yield period, group, counts

    def by_film_size(self) -> list[dict[str, Any]]:
        sizes = self.total().sizes
        found = []
        for size in sorted(sizes, key=lambda s: (s == "", s)):
            captured, on_film = sizes[size]
            price = self.prices.of_size(size)
            found.append(
                {
                    "film_size": size,
                    "sheets_captured": captured,
                    "sheets_printed_on_film": on_film,
                    "price": float(price),
                    "money_saved": float(((captured - on_film) * price).quantize(_CENT)),
                }
            )
        return found

    def as_json(self) -> dict[str, Any]:
        query, prices = self.query, self.prices
        return {
            "group": query.group,
            "period": query.period,
            "from": query.start.isoformat(),
            "to": query.end.isoformat(),
            "time_zone": query.zone,
            "institution": query.institution,
            "currency": prices.currency,
            "prices": {size: float(price) for size, price in sorted(prices.by_size.items())},
            "default_price": float(prices.default),
            "measures": list(MEASURES),
            "periods": [
                {"period": p.label, "start": p.start.isoformat(), "end": p.end.isoformat()}
                for p in self.periods
            ],
            "groups": self.groups,
            "rows": [
                {"period": p.label, "group": g, **c.as_dict(prices)} for p, g, c in self.rows()
            ],
            "by_period": [{"period": p.label, **c.as_dict(prices)} for p, c in self.by_period()],
            "by_group": [{"group": g, **c.as_dict(prices)} for g, c in self.by_group()],
            "by_film_size": self.by_film_size(),
            "totals": self.total().as_dict(prices),
        }

    def as_csv(self) -> str:
        """The rows as CSV: a header, then one line per period and group that counts
        something (money with two decimals). Without the byte order mark."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["period", "start", "end", self.query.group, *MEASURES])
        for period, group, counts in self.rows():
            values = [counts.values[m] for m in MEASURES[:-1]]
            money = f"{counts.money_saved(self.prices):.2f}"
            writer.writerow(
                [period.label, period.start.isoformat(), period.end.isoformat(),
                 _csv_text(group), *values, money]
            )  # fmt: skip
        return out.getvalue()


def _csv_text(value: str) -> str:
    """A text cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# ------------------------------------------------------------------------------- counting


def compute_figures(archive: Archive, query: FiguresQuery, prices: Prices) -> Figures:
    """Count the figures of ``query`` in the archive's index (see the module notes)."""
    departments = {p.ae_title: p.department.strip() for p in PeerDirectory(archive).all()}
    figures = Figures(query, prices, periods_between(query.start, query.end, query.period))
    label_of: dict[date, str] = {}
    for period in figures.periods:
        day = period.start
        while day <= period.end:
            label_of[day] = period.label
            day += timedelta(days=1)
    with archive.engine.connect() as conn:
        dialect = conn.dialect.name
        for stmt in _statements(query, dialect):
            for day, institution, modality, source, film_size, kind, count in conn.execute(stmt):
                institution = institution or ""
                if query.institution is not None and institution != query.institution:
                    continue
                found = date.fromisoformat(str(day)[:10])
                if found not in label_of or not count:
                    continue
                attributes = {
                    "institution": institution,
                    "modality": (modality or "").strip(),
                    "department": _department(departments, source),
                }
                key = (label_of[found], attributes[query.group])
                figures.cells.setdefault(key, Counts()).add(kind, film_size or "", int(count))
    return figures


def _department(departments: dict[str, str], source: str | None) -> str:
    """The department of the peer whose AE a source names (``dimse:<AE>``, ``print:<AE>``)."""
    kind, _, ae = (source or "").partition(":")
    if kind not in ("dimse", "print") or not ae:
        return ""
    return departments.get(ae.strip(), "")


def _statements(query: FiguresQuery, dialect: str) -> Iterable[_Rows]:
    """One aggregate query per kind of counted thing, each answering rows of (local day,
    institution, modality, source naming the department's AE, film size, kind, count)."""
    start, end = query.utc_bounds
    days = _LocalDays(dialect, ZoneInfo(query.zone), start, end)
    for inner in (
        _exams(days),
        _sheets(days),
        _printed_films(days),
        _film_prints(days),
        _shares(days),
        _accesses(days),
        _holders(days),
    ):
        sub = inner.subquery()
        keys = [sub.c.day, sub.c.institution, sub.c.modality, sub.c.source, sub.c.film_size,
                sub.c.kind]  # fmt: skip
        yield select(*keys, func.sum(sub.c.n)).group_by(*keys)


class _LocalDays:
    """The local day (``YYYY-MM-DD``) of a timestamp column, and the range condition.

    PostgreSQL converts with the time zone database (``timezone(zone, at)``). SQLite keeps
    UTC timestamps as text and knows no time zones: the zone's UTC offsets over the range are
    worked out here (with their transitions, e.g. daylight saving time) and applied as a
    ``CASE`` of ``date(at, '+480 minutes')`` modifiers, exact at every instant.
    """

    def __init__(self, dialect: str, zone: ZoneInfo, start: datetime, end: datetime) -> None:
        self.dialect, self.zone, self.start, self.end = dialect, zone, start, end
        self.pieces = _offsets(zone, start, end)

    def day(self, column: SQLColumnExpression[Any]) -> ColumnElement[Any]:
        if self.dialect == "postgresql":
            return func.to_char(func.timezone(self.zone.key, column), "YYYY-MM-DD")
        modifiers = [(until, literal(f"{minutes:+d} minutes")) for until, minutes in self.pieces]
        if len(modifiers) == 1:
            return func.date(column, modifiers[0][1])
        whens = [(column < until, modifier) for until, modifier in modifiers[:-1]]
        return func.date(column, case(*whens, else_=modifiers[-1][1]))

    def within(self, column: SQLColumnExpression[Any]) -> ColumnElement[bool]:
        return and_(column >= self.start, column < self.end)


def _offsets(zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """The zone's UTC offsets (minutes) over [start, end): ``(until, minutes)`` pieces in
    order, the last one's ``until`` being ``end``. Transitions are found to the second."""

    def minutes(at: int) -> int:
        offset = datetime.fromtimestamp(at, UTC).astimezone(zone).utcoffset()
        return int((offset or timedelta()).total_seconds() // 60)

    first, last = int(start.timestamp()), int(end.timestamp())
    pieces: list[tuple[datetime, int]] = []
    current, at = minutes(first), first
    step = 12 * 3600
    while at < last:
        ahead = min(at + step, last)
        if minutes(ahead) != current:
            low, high = at, ahead  # minutes(low) == current != minutes(high)
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if minutes(middle) == current else (low, middle)
            pieces.append((datetime.fromtimestamp(high, UTC), current))
            current = minutes(high)
            at = high
            continue
        at = ahead
    pieces.append((end, current))
    return pieces


def _text(value: str) -> ColumnElement[str]:
    return literal(value, String)


def _one() -> ColumnElement[int]:
    return literal(1, Integer)


def _exam_attributes(study_pks: _Rows) -> Subquery:
    """For the studies ``study_pks`` selects: their owner's code (``institution``), the
    modality of their first series and the source of their first instance."""
    series, instance = aliased(Series), aliased(Instance)
    pks = study_pks.correlate(None)
    first = (
        select(series.study_pk.label("study_pk"), func.min(instance.pk).label("instance_pk"))
        .join(instance, instance.series_pk == series.pk)
        .where(series.study_pk.in_(pks))
        .group_by(series.study_pk)
        .subquery("first_instance")
    )
    access, institution = aliased(StudyAccess), aliased(Institution)
    owner = (
        select(access.study_pk.label("study_pk"), func.min(institution.code).label("code"))
        .join(institution, institution.pk == access.institution_pk)
        .where(access.relation == "owner", access.study_pk.in_(pks))
        .group_by(access.study_pk)
        .subquery("study_owner")
    )
    first_instance, first_series = aliased(Instance), aliased(Series)
    return (
        select(
            first.c.study_pk,
            owner.c.code.label("institution"),
            first_series.modality.label("modality"),
            first_instance.source.label("source"),
        )
        .select_from(first)
        .join(first_instance, first_instance.pk == first.c.instance_pk)
        .join(first_series, first_series.pk == first_instance.series_pk)
        .outerjoin(owner, owner.c.study_pk == first.c.study_pk)
        .subquery("exam")
    )


def _exams(days: _LocalDays) -> _Rows:
    in_range = days.within(Study.created_at)
    exam = _exam_attributes(select(Study.pk).where(in_range))
    return (
        select(
            days.day(Study.created_at).label("day"),
            exam.c.institution,
            exam.c.modality,
            exam.c.source,
            _text("").label("film_size"),
            _text("exam").label("kind"),
            _one().label("n"),
        )
        .select_from(Study)
        .outerjoin(exam, exam.c.study_pk == Study.pk)
        .where(in_range)
    )


def _sheets(days: _LocalDays) -> _Rows:
    """Sheets stored in studies, except those attached from the unmatched films (counted
    when they were printed, by :func:`_printed_films`)."""
    sheet, series = aliased(Instance), aliased(Series)
    attached = select(PrintedFilm.attached_sop_instance_uid).where(
        PrintedFilm.attached_sop_instance_uid.is_not(None)
    )
    where = and_(
        days.within(sheet.received_at),
        sheet.sop_class_uid == SECONDARY_CAPTURE,
        or_(sheet.source == "film", sheet.source.like("print:%")),
        sheet.sop_instance_uid.not_in(attached.correlate(None)),
    )
    exam = _exam_attributes(
        select(series.study_pk).join(sheet, sheet.series_pk == series.pk).where(where)
    )
    composed = sheet.source == "film"
    return (
        select(
            days.day(sheet.received_at).label("day"),
            exam.c.institution,
            exam.c.modality,
            case((composed, exam.c.source), else_=sheet.source).label("source"),
            func.coalesce(sheet.film_size, "").label("film_size"),
            case((composed, _text("composed")), else_=_text("printed")).label("kind"),
            _one().label("n"),
        )
        .select_from(sheet)
        .join(series, series.pk == sheet.series_pk)
        .outerjoin(exam, exam.c.study_pk == series.study_pk)
        .where(where)
    )


def _printed_films(days: _LocalDays) -> _Rows:
    """Sheets printed to the virtual printer that were kept unmatched (attached since or not)."""
    film, study = aliased(PrintedFilm), aliased(Study)
    in_range = days.within(film.created_at)
    exam = _exam_attributes(
        select(study.pk).join(film, film.attached_study_uid == study.study_uid).where(in_range)
    )
    return (
        select(
            days.day(film.created_at).label("day"),
            film.institution.label("institution"),
            exam.c.modality,
            (_text("print:") + film.calling_ae).label("source"),
            film.film_size.label("film_size"),
            _text("printed").label("kind"),
            _one().label("n"),
        )
        .select_from(film)
        .outerjoin(study, study.study_uid == film.attached_study_uid)
        .outerjoin(exam, exam.c.study_pk == study.pk)
        .where(in_range)
    )


def _film_prints(days: _LocalDays) -> _Rows:
    """Copies printed on real film: ``film_print`` jobs done, when they finished."""
    job, study, sheet = aliased(FilmPrint), aliased(Study), aliased(Instance)
    film = aliased(PrintedFilm)
    at = func.coalesce(job.finished_at, job.updated_at)
    where = and_(job.state == "done", days.within(at))
    exam = _exam_attributes(
        select(study.pk).join(job, job.study_uid == study.study_uid).where(where)
    )
    source = case(
        (sheet.source.like("print:%"), sheet.source),
        (film.calling_ae.is_not(None), _text("print:") + film.calling_ae),
        else_=exam.c.source,
    )
    return (
        select(
            days.day(at).label("day"),
            case((job.institution != "", job.institution), else_=exam.c.institution).label(
                "institution"
            ),
            exam.c.modality,
            source.label("source"),
            job.film_size.label("film_size"),
            _text("on-film").label("kind"),
            job.copies.label("n"),
        )
        .select_from(job)
        .outerjoin(study, study.study_uid == job.study_uid)
        .outerjoin(exam, exam.c.study_pk == study.pk)
        .outerjoin(sheet, sheet.sop_instance_uid == job.sop_instance_uid)
        .outerjoin(film, film.pk == job.printed_film_pk)
        .where(where)
    )


def _share_attributes(share_ids: _Rows) -> Subquery:
    """For the shares ``share_ids`` selects: the issuer's institution (else the owner of the
    first study), and the modality and source of their first study (lowest key)."""
    ids = share_ids.correlate(None)
    reached, study = aliased(ShareStudy), aliased(Study)
    first = (
        select(reached.share_id.label("share_id"), func.min(study.pk).label("study_pk"))
        .join(study, study.study_uid == reached.study_uid)
        .where(reached.share_id.in_(ids))
        .group_by(reached.share_id)
        .subquery("first_study")
    )
    exam = _exam_attributes(select(first.c.study_pk))
    share, issuer = aliased(Share), aliased(Institution)
    return (
        select(
            share.id.label("share_id"),
            func.coalesce(issuer.code, exam.c.institution).label("institution"),
            exam.c.modality,
            exam.c.source,
        )
        .select_from(share)
        .outerjoin(issuer, issuer.pk == share.institution_pk)
        .outerjoin(first, first.c.share_id == share.id)
        .outerjoin(exam, exam.c.study_pk == first.c.study_pk)
        .where(share.id.in_(ids))
        .subquery("share_attributes")
    )


def _shares(days: _LocalDays) -> _Rows:
    """Cloud films issued (no parent) and reshares (a parent), when they were made."""
    share = aliased(Share)
    in_range = days.within(share.created_at)
    attributes = _share_attributes(select(share.id).where(in_range))
    return (
        select(
            days.day(share.created_at).label("day"),
            attributes.c.institution,
            attributes.c.modality,
            attributes.c.source,
            _text("").label("film_size"),
            case((share.parent_id.is_(None), _text("issued")), else_=_text("reshare")).label(
                "kind"
            ),
            _one().label("n"),
        )
        .select_from(share)
        .join(attributes, attributes.c.share_id == share.id)
        .where(in_range)
    )


def _accesses(days: _LocalDays) -> _Rows:
    """Openings and downloads of cloud films and of their reshares."""
    access = aliased(ShareAccess)
    where = and_(days.within(access.at), access.action.in_(("open", "download")))
    attributes = _share_attributes(select(access.share_id).where(where))
    return (
        select(
            days.day(access.at).label("day"),
            attributes.c.institution,
            attributes.c.modality,
            attributes.c.source,
            _text("").label("film_size"),
            cast(access.action, String).label("kind"),
            _one().label("n"),
        )
        .select_from(access)
        .join(attributes, attributes.c.share_id == access.share_id)
        .where(where)
    )


def _holders(days: _LocalDays) -> _Rows:
    """Studies another institution sent in too (``holder``), when that one first did."""
    access = aliased(StudyAccess)
    where = and_(access.relation == "holder", days.within(access.created_at))
    exam = _exam_attributes(select(access.study_pk).where(where))
    return (
        select(
            days.day(access.created_at).label("day"),
            exam.c.institution,
            exam.c.modality,
            exam.c.source,
            _text("").label("film_size"),
            _text("holder").label("kind"),
            _one().label("n"),
        )
        .select_from(access)
        .outerjoin(exam, exam.c.study_pk == access.study_pk)
        .where(where)
    )
