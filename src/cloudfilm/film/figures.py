"""The figures of film saved over HTTP (docs/film.md, "Figures of film saved").

* ``GET /api/figures`` — JSON (default) or CSV (``format=csv``: UTF-8 with a byte order mark,
  so that Excel opens Chinese text, a header row, one line per period and group).
* ``GET /staff/figures`` — the staff page: charts (inline SVG), the table, the figures by film
  size, and links to both exports.

Parameters (all optional): ``group`` (``institution``, ``modality`` or ``department``;
default ``institution``), ``period`` (``day``, ``week`` or ``month``; default ``day``),
``from`` and ``to`` (``YYYY-MM-DD``, local days of ``figures_time_zone``, both included;
default the last 30 days, 12 weeks or 12 months to today), ``institution`` (a code; the
platform's administrators only) and ``format``. Anything else — an unknown or repeated
parameter, a bad value, ``from`` after ``to``, a range longer than :data:`MAX_DAYS` allows —
is answered 400 with the reason.

Who: staff who may manage cloud films (admin, technologist, radiologist; their API keys) see
their own institution's figures; the platform's administrators (and development) see every
institution's, or one's with ``institution``. Referring doctors get 403; links and callers
without credentials never reach them. Figures are counts, never patient data; the request is
recorded in the audit trail like every other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep, SettingsDep
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Forbidden, InvalidQuery
from cloudfilm.film.charts import Series, bar_chart, line_chart
from cloudfilm.film.stats import (
    GROUPS,
    MEASURES,
    PERIODS,
    Figures,
    FiguresQuery,
    Prices,
    compute_figures,
)
from cloudfilm.index.models import Institution
from cloudfilm.sharing.staff import StaffRoute, render_staff
from cloudfilm.web.headers import content_disposition

__all__ = ["FiguresRequest", "api_router", "parse_figures", "staff_router"]

#: Longest range of local days for each period.
MAX_DAYS = {"day": 366, "week": 7 * 157, "month": 3660}
FORMATS = ("json", "csv")
PARAMETERS = ("group", "period", "from", "to", "institution", "format")
#: Parameters only the page takes (the language switch).
PAGE_PARAMETERS = ("lang",)
BOM = "\ufeff"


@dataclass(frozen=True)
class FiguresRequest:
    """A parsed request: the query (its ``institution`` still the one asked for) and the
    export format."""

    query: FiguresQuery
    format: str


def parse_figures(
    params: Mapping[str, str] | Any,
    zone: str,
    today: date | None = None,
    extra: tuple[str, ...] = (),
) -> FiguresRequest:
    """The figures a request asks for (see the module notes).

    Raises
    ------
    InvalidQuery
        For an unknown or repeated parameter, a bad value or a range too long.
    """
    allowed = PARAMETERS + extra
    keys = list(params.keys()) if not hasattr(params, "multi_items") else [
        k for k, _ in params.multi_items()
    ]  # fmt: skip
    for key in keys:
        if key not in allowed:
            raise InvalidQuery(f"unknown parameter {key[:40]!r}; use {', '.join(PARAMETERS)}")
        if keys.count(key) > 1:
            raise InvalidQuery(f"parameter {key!r} is given more than once")
    group = _choice(params, "group", GROUPS, "institution")
    period = _choice(params, "period", PERIODS, "day")
    fmt = _choice(params, "format", FORMATS, "json")
    today = today or datetime.now(ZoneInfo(zone)).date()
    end = _date(params, "to") or today
    start = _date(params, "from") or _default_start(end, period)
    if start > end:
        raise InvalidQuery(f"'from' ({start}) is after 'to' ({end})")
    days = (end - start).days + 1
    if days > MAX_DAYS[period]:
        raise InvalidQuery(
            f"{days} days is too long a range by {period}: at most {MAX_DAYS[period]}; "
            "choose a longer period or a shorter range"
        )
    institution = params.get("institution")
    if institution is not None:
        institution = institution.strip()
        if not institution or len(institution) > 64:
            raise InvalidQuery("'institution' must be an institution code (1-64 characters)")
    return FiguresRequest(FiguresQuery(group, period, start, end, zone, institution), fmt)


def _choice(params: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in choices:
        raise InvalidQuery(f"{name} must be one of {', '.join(choices)}, not {value[:40]!r}")
    return value


def _date(params: Mapping[str, str], name: str) -> date | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) != 10 or value[4] != "-" or value[7] != "-":
        raise InvalidQuery(f"'{name}' must be a date as YYYY-MM-DD, not {value[:40]!r}")
    try:
        found = date.fromisoformat(value)
    except ValueError:
        raise InvalidQuery(f"'{name}' is not a valid date: {value!r}") from None
    if found.year < 1900:
        raise InvalidQuery(f"'{name}' is before 1900: {value!r}")
    return found


def _default_start(end: date, period: str) -> date:
    if period == "week":
        return end - timedelta(days=end.weekday() + 7 * 11)
    if period == "month":
        first = end.replace(day=1)
        for _ in range(11):
            first = (first - timedelta(days=1)).replace(day=1)
        return first
    return end - timedelta(days=29)


# ---------------------------------------------------------------------------------- access


def require_figures(principal: Principal) -> Principal:
    """The caller, when it may see figures: staff who manage cloud films, the platform's
    administrators, development. Else 403."""
    if not (principal.kind == "development" or principal.all_institutions
            or principal.can_manage_shares()):  # fmt: skip
        raise Forbidden("only hospital staff may see the figures of film saved")
    return principal


def scoped(archive: Archive, principal: Principal, query: FiguresQuery) -> FiguresQuery:
    """The query narrowed to what the caller may see: its own institution (asking for
    another is 403), or, for the platform, every institution or the one asked for (an
    unknown code is 400)."""
    if principal.kind == "development" or principal.all_institutions:
        if query.institution is not None and query.institution not in institution_names(archive):
            raise InvalidQuery(f"there is no institution {query.institution!r}")
        return query
    own = principal.institution
    if not own:
        raise Forbidden("this account belongs to no institution")
    if query.institution is not None and query.institution != own:
        raise Forbidden("staff see the figures of their own institution only")
    return replace(query, institution=own)


def institution_names(archive: Archive) -> dict[str, str]:
    """Every institution's code and name ('' when it has none)."""
    with archive.sessions() as session:
        rows = session.execute(select(Institution.code, Institution.name)).all()
    return {code: name or "" for code, name in rows}


def _figures(
    archive: Archive, settings: Settings, principal: Principal, wanted: FiguresRequest
) -> Figures:
    query = scoped(archive, principal, wanted.query)
    return compute_figures(archive, query, Prices.of(settings))


# ------------------------------------------------------------------------------------- API

api_router = APIRouter(tags=["figures"])


@api_router.get("/api/figures")
async def figures_api(
    request: Request, principal: PrincipalDep, archive: ArchiveDep, settings: SettingsDep
) -> Response:
    """The figures of film saved as JSON, or as CSV with ``format=csv``."""
    require_figures(principal)
    wanted = parse_figures(request.query_params, settings.figures_time_zone)
    figures = await run_in_threadpool(_figures, archive, settings, principal, wanted)
    if wanted.format == "csv":
        return csv_response(figures)
    return JSONResponse(figures.as_json(), headers={"Cache-Control": "private, no-store"})


def csv_response(figures: Figures) -> Response:
    query = figures.query
    name = f"film-figures-{query.group}-{query.period}-{query.start}-{query.end}.csv"
    return Response(
        (BOM + figures.as_csv()).encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": content_disposition(name, "film-figures.csv"),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


# ------------------------------------------------------------------------------------ page

staff_router = APIRouter(prefix="/staff", route_class=StaffRoute, include_in_schema=False)

#: The measures shown as tiles at the top of the page.
HEADLINE = ("exams", "sheets_captured", "sheets_printed_on_film", "money_saved",
            "cloud_films_issued", "cloud_films_opened", "cloud_films_downloaded",
            "shares_to_other_hospitals")  # fmt: skip


@staff_router.get("/figures")
def figures_page(
    request: Request, principal: PrincipalDep, archive: ArchiveDep, settings: SettingsDep
) -> Response:
    """The figures of film saved: charts, the table and the exports."""
    require_figures(principal)
    params = request.query_params
    everyone = principal.kind == "development" or principal.all_institutions
    names = institution_names(archive)
    base: dict[str, Any] = {
        "values": {k: params.get(k, "")[:64] for k in PARAMETERS},
        "groups": GROUPS,
        "periods": PERIODS,
        "institutions": sorted(names.items()) if everyone else [],
        "time_zone": settings.figures_time_zone,
        "lang_href": _lang_href(request),
    }
    try:
        wanted = parse_figures(params, settings.figures_time_zone, extra=PAGE_PARAMETERS)
        if wanted.format != "json":
            raise InvalidQuery("the page has no format; use the CSV and JSON links")
        figures = _figures(archive, settings, principal, wanted)
    except InvalidQuery as exc:
        return render_staff(request, "staff_figures.html", {**base, "error": exc.message}, 400)
    recognition = _recognition(archive, figures.query, principal)
    page = {**base, **_page(request, figures, names), "recognition": recognition}
    return render_staff(request, "staff_figures.html", page)


def _recognition(archive: Archive, query: FiguresQuery, principal: Principal) -> list[Any]:
    """The mutual-recognition figures (``cloudfilm.patients.recognition``) of the same
    institutions and days as the film figures."""
    from cloudfilm.access.visibility import institution_pk_of
    from cloudfilm.patients.recognition import figures as recognition_figures

    scope = scoped(archive, principal, query)
    wanted = None
    if scope.institution is not None:
        pk = institution_pk_of(archive, scope.institution)
        wanted = [pk] if pk is not None else []
    since, until = scope.utc_bounds
    return recognition_figures(archive, institution_pks=wanted, since=since, until=until)


def _lang_href(request: Request) -> str:
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"][:10]
    return "?" + urlencode([*kept, ("lang", "zh" if _lang(request) == "en" else "en")])


def _lang(request: Request) -> str:
    from cloudfilm.web.i18n import choose_language

    return choose_language(request)


def _page(request: Request, figures: Figures, names: dict[str, str]) -> dict[str, Any]:
    from cloudfilm.web.i18n import translator

    t = translator(_lang(request))
    query, prices = figures.query, figures.prices
    unspecified = t("figures.unspecified")

    def label(group: str) -> str:
        if not group:
            return unspecified
        if query.group == "institution" and names.get(group):
            return f"{names[group]} ({group})"
        return group

    def money(value: float) -> str:
        return f"{prices.currency} {value:,.2f}"

    per_period = list(figures.by_period())
    per_group = list(figures.by_group())
    periods = [p.label for p, _ in per_period]

    def series(measure: str, rows: list[Any]) -> Series:
        return Series(t(f"figures.m.{measure}"), [_value(c, measure, prices) for _, c in rows])

    films = ("cloud_films_issued", "cloud_films_opened", "cloud_films_downloaded",
             "shares_to_other_hospitals")  # fmt: skip
    drawn = [
        ("sheets", bar_chart, [series("sheets_captured", per_period),
                               series("sheets_printed_on_film", per_period)]),
        ("money", bar_chart, [series("money_saved", per_period)]),
        ("films", line_chart, [series(m, per_period) for m in films]),
    ]  # fmt: skip
    charts = [
        (t(f"figures.chart.{name}"), draw(t(f"figures.chart.{name}"), f"chart-{name}", periods,
                                          lines, money if name == "money" else _count))
        for name, draw, lines in drawn
    ]  # fmt: skip
    if per_group:
        title = t(f"figures.chart.by_{query.group}")
        lines = [series(m, per_group) for m in ("exams", "sheets_captured", "cloud_films_issued")]
        groups = [label(g) for g, _ in per_group]
        charts.append((title, bar_chart(title, "chart-groups", groups, lines)))
    total = figures.total()
    exports = {k: v for k, v in (("group", query.group), ("period", query.period),
               ("from", query.start.isoformat()), ("to", query.end.isoformat()))}  # fmt: skip
    if query.institution is not None and request.query_params.get("institution"):
        exports["institution"] = query.institution
    root = str(request.scope.get("root_path", ""))
    return {
        "values": {**exports, "institution": request.query_params.get("institution", "")},
        "query": query,
        "measures": MEASURES,
        "headline": [(m, _shown(total, m, prices)) for m in HEADLINE],
        "charts": charts,
        "rows": [
            {
                "period": p.label,
                "group": label(g),
                "raw_group": g,
                "values": [_shown(c, m, prices) for m in MEASURES],
            }
            for p, g, c in figures.rows()
        ],
        "totals": [_shown(total, m, prices) for m in MEASURES],
        "by_size": figures.by_film_size(),
        "currency": prices.currency,
        "default_price": f"{prices.default:.2f}",
        "scope": label(query.institution) if query.institution else "",
        "csv_url": f"{root}/api/figures?{urlencode({**exports, 'format': 'csv'})}",
        "json_url": f"{root}/api/figures?{urlencode(exports)}",
    }


def _count(value: float) -> str:
    return f"{int(value):,}"


def _value(counts: Any, measure: str, prices: Prices) -> float:
    if measure == "money_saved":
        return float(counts.money_saved(prices))
    return float(counts.values[measure])


def _shown(counts: Any, measure: str, prices: Prices) -> str:
    if measure == "money_saved":
        return f"{counts.money_saved(prices):,.2f}"
    return f"{counts.values[measure]:,}"
