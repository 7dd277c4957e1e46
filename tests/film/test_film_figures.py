"""The figures of film saved count exactly what was done (docs/film.md, "Figures of film
saved"): by institution, modality and department, per day, week and month; as JSON, CSV and
the staff page; bad parameters refused; each caller sees what it may.

The world (``figures_support``) is built through the real code paths (stores from peers with
departments, the virtual printer's matching and unmatched films, composed sheets, cloud films,
their openings, downloads and reshares); :data:`LEDGER` is what it did, written by hand.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient
from figures_support import (
    D1,
    D2,
    D3,
    D4,
    DEFAULT_PRICE,
    FIRST,
    LAST,
    PRICES,
    RADIOLOGY_ZH,
    build_world,
    world_settings,
)
from pydantic import ValidationError
from sqlalchemy import update

from cloudfilm.access.accounts import Accounts, utcnow
from cloudfilm.api.app import create_app
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.film.stats import MEASURES, FiguresQuery, Prices, compute_figures, periods_between
from cloudfilm.index.models import Study
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

A, B = "hosp-a", "hosp-b"
S14, S11, S8 = "14INX17IN", "11INX14IN", "8INX10IN"
#: What the world did: (local day, institution, modality, department, kind, film size, count).
LEDGER: list[tuple[date, str, str, str, str, str, int]] = [
    # exams (S6, the evening before D1, is outside the range)
    (D1, A, "CT", "radiology", "exam", "", 1),  # S1 from CT-A
    (D1, A, "MR", "", "exam", "", 1),  # S2 from MR-A (no department)
    (D2, A, "CT", "", "exam", "", 1),  # S5 by STOW, 00:30 local (still D1 in UTC)
    (D3, B, "US", "ultrasound", "exam", "", 1),  # S3 from US-B
    (D4, B, "DX", RADIOLOGY_ZH, "exam", "", 1),  # S4 from DR-B (a configured peer)
    # sheets printed to the virtual printer
    (D1, A, "CT", "radiology", "printed", S14, 1),  # P1, matched to S1
    (D2, A, "CT", "radiology", "printed", S14, 1),  # P2, matched to S1
    (D3, B, "US", "ultrasound", "printed", S8, 1),  # U1, unmatched, attached to S3 on D4
    (D4, B, "", RADIOLOGY_ZH, "printed", S8, 1),  # U2, unmatched for good
    # sheets composed in cloudfilm
    (D3, A, "CT", "radiology", "composed", S11, 1),  # C1 on S1 (11INX14IN: default price)
    (D2, A, "MR", "", "composed", S14, 1),  # C2 on S2
    # printed on real film anyway (a failed job, a pending one and a later one do not count)
    (D2, A, "CT", "radiology", "on-film", S14, 2),  # P1, two copies
    (D4, B, "", RADIOLOGY_ZH, "on-film", S8, 1),  # U2
    # cloud films
    (D1, A, "CT", "radiology", "issued", "", 1),  # SH1 for S1
    (D3, B, "US", "ultrasound", "issued", "", 1),  # SH2 for S3
    (D4, A, "MR", "", "issued", "", 1),  # SH3 for S2, by the platform: the owner's
    (D2, A, "CT", "radiology", "reshare", "", 1),  # R1 from SH1
    (D1, A, "CT", "radiology", "open", "", 1),
    (D2, A, "CT", "radiology", "open", "", 2),  # SH1 and R1 (a renewal does not count)
    (D2, A, "CT", "radiology", "download", "", 2),  # SH1 and R1
    (D4, B, "US", "ultrasound", "open", "", 1),  # SH2 (its opening the next day is outside)
    (D3, A, "CT", "radiology", "holder", "", 1),  # B sent S1 in too
]
KIND_MEASURES = {
    "exam": ["exams"],
    "printed": ["sheets_printed_to_cloud", "sheets_captured"],
    "composed": ["sheets_composed", "sheets_captured"],
    "on-film": ["sheets_printed_on_film"],
    "issued": ["cloud_films_issued"],
    "open": ["cloud_films_opened"],
    "download": ["cloud_films_downloaded"],
    "reshare": ["reshares", "shares_to_other_hospitals"],
    "holder": ["studies_held_elsewhere", "shares_to_other_hospitals"],
}
GROUP_INDEX = {"institution": 1, "modality": 2, "department": 3}


def period_of(day: date, period: str) -> str:
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return day.strftime("%Y-%m") if period == "month" else day.isoformat()


def price(size: str) -> Decimal:
    return Decimal(str(PRICES.get(size, DEFAULT_PRICE)))


def expected(group: str, period: str, only: str | None = None) -> dict[tuple[str, str], dict]:
    """The rows the ledger makes: (period, group) → every measure."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    money: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for entry in LEDGER:
        day, institution, _, _, kind, size, count = entry
        if only is not None and institution != only:
            continue
        key = (period_of(day, period), str(entry[GROUP_INDEX[group]]))
        row = rows.setdefault(key, dict.fromkeys(MEASURES, 0))
        for measure in KIND_MEASURES[kind]:
            row[measure] += count
        if kind in ("printed", "composed"):
            money[key] += count * price(size)
        elif kind == "on-film":
            money[key] -= count * price(size)
    for key, row in rows.items():
        row["money_saved"] = float(money[key])
    return rows


@pytest.fixture
def world_archive(settings: Settings) -> Iterator[Archive]:
    with Archive.open(world_settings(settings)) as archive:
        archive.world = build_world(archive)  # type: ignore[attr-defined]
        yield archive


@pytest.fixture
def client(world_archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(world_archive.settings, world_archive)) as test_client:
        yield test_client


def ask(client: TestClient, **params: str) -> Any:
    answer = client.get("/api/figures", params={"from": str(FIRST), "to": str(LAST), **params})
    assert answer.status_code == 200, answer.text
    return answer


# ------------------------------------------------------------------------------ the counts


def test_the_week_by_institution_by_hand(client: TestClient) -> None:
    """One table written out in full, not folded from the ledger."""
    body = ask(client, group="institution", period="week").json()
    rows = {(r["period"], r["group"]): r for r in body["rows"]}
    assert set(rows) == {("2026-W14", A), ("2026-W14", B), ("2026-W15", A), ("2026-W15", B)}
    a14 = {"exams": 3, "sheets_printed_to_cloud": 2, "sheets_composed": 2, "sheets_captured": 4,
           "sheets_printed_on_film": 2, "cloud_films_issued": 1, "cloud_films_opened": 3,
           "cloud_films_downloaded": 2, "reshares": 1, "studies_held_elsewhere": 1,
           "shares_to_other_hospitals": 2, "money_saved": 20.5}  # fmt: skip
    assert {k: rows[("2026-W14", A)][k] for k in a14} == a14
    b14 = rows[("2026-W14", B)]
    assert (b14["exams"], b14["sheets_captured"], b14["cloud_films_issued"]) == (1, 1, 1)
    assert b14["money_saved"] == 6.0
    assert rows[("2026-W15", A)]["cloud_films_issued"] == 1
    assert sum(v for k, v in rows[("2026-W15", A)].items() if k in MEASURES) == 1
    b15 = rows[("2026-W15", B)]
    assert (b15["sheets_captured"], b15["sheets_printed_on_film"], b15["money_saved"]) == (1, 1, 0)
    assert body["totals"]["money_saved"] == 26.5  # 3×12.50 + 8.00 + 2×6.00 − 2×12.50 − 6.00
    assert body["totals"]["sheets_captured"] == 6 and body["totals"]["exams"] == 5


def test_every_figure_by_group_and_period(client: TestClient) -> None:
    for group in ("institution", "modality", "department"):
        for period in ("day", "week", "month"):
            _check_figures(ask(client, group=group, period=period).json(), group, period)


def _check_figures(body: dict[str, Any], group: str, period: str) -> None:
    where = f"by {group} per {period}"
    want = expected(group, period)
    got = {(r["period"], r["group"]): {m: r[m] for m in MEASURES} for r in body["rows"]}
    assert got == want, where
    assert body["measures"] == list(MEASURES)
    assert (body["group"], body["period"], body["time_zone"]) == (group, period, "Asia/Shanghai")
    assert body["currency"] == "CNY" and body["prices"] == PRICES
    assert body["default_price"] == DEFAULT_PRICE
    labels = [p["period"] for p in body["periods"]]
    assert labels == sorted({period_of(FIRST + timedelta(days=n), period) for n in range(8)})
    for row in body["by_period"]:
        for measure in MEASURES:
            assert row[measure] == pytest.approx(
                sum(v[measure] for (p, _), v in want.items() if p == row["period"])
            ), where
    totals = {m: sum(v[m] for v in want.values()) for m in MEASURES}
    assert body["totals"] == pytest.approx(totals), where
    assert body["groups"] == sorted({g for _, g in want}, key=lambda g: (g == "", g)), where


def test_money_by_film_size(client: TestClient) -> None:
    sizes = {r["film_size"]: r for r in ask(client).json()["by_film_size"]}
    assert sizes[S14] == {"film_size": S14, "sheets_captured": 3, "sheets_printed_on_film": 2,
                          "price": 12.5, "money_saved": 12.5}  # fmt: skip
    assert sizes[S11] == {"film_size": S11, "sheets_captured": 1, "sheets_printed_on_film": 0,
                          "price": 8.0, "money_saved": 8.0}  # fmt: skip
    assert sizes[S8] == {"film_size": S8, "sheets_captured": 2, "sheets_printed_on_film": 1,
                         "price": 6.0, "money_saved": 6.0}  # fmt: skip
    assert set(sizes) == {S14, S11, S8}


def test_days_in_utc_fall_elsewhere(world_archive: Archive) -> None:
    """The same world counted in UTC: S5 (00:30 local) is on the day before, S4 (07:00
    local on D4) too, and SH2's opening at local midnight after D4 comes inside."""
    query = FiguresQuery("institution", "day", FIRST, LAST, "UTC")
    figures = compute_figures(world_archive, query, Prices.of(world_archive.settings))
    exams = {(p.label, g): c.values["exams"] for (p, g, c) in figures.rows()}
    assert {k: v for k, v in exams.items() if v} == {
        ("2026-03-30", A): 3, ("2026-04-01", B): 1, ("2026-04-05", B): 1,
    }  # fmt: skip
    opened = {(p.label, g): c.values["cloud_films_opened"] for p, g, c in figures.rows()}
    assert opened[("2026-04-06", B)] == 2


def test_a_range_cuts_its_periods(client: TestClient) -> None:
    body = ask(client, period="week", **{"from": str(D2), "to": str(D3)}).json()
    assert body["periods"] == [{"period": "2026-W14", "start": str(D2), "end": str(D3)}]
    assert body["totals"]["exams"] == 2  # S5 and S3 (S1 and S2 are on D1)
    assert body["totals"]["cloud_films_opened"] == 2


def test_daylight_saving_days(settings: Settings) -> None:
    """Local days across a change of UTC offset (New York, 2026-03-08 02:00 → 03:00)."""
    zoned = settings.model_copy(update={"figures_time_zone": "America/New_York"})
    instants = ["2026-03-08T04:59:59", "2026-03-08T05:00:00", "2026-03-09T03:59:59",
                "2026-03-09T04:00:00", "2026-03-07T05:00:00"]  # fmt: skip
    with Archive.open(zoned) as archive:
        for at in instants:
            ds = make_dataset(PatientID="DST")
            assert archive.store(part10(ds)).ok
            moment = datetime.fromisoformat(at).replace(tzinfo=UTC)
            with archive.sessions.begin() as session:
                session.execute(
                    update(Study)
                    .where(Study.study_uid == str(ds.StudyInstanceUID))
                    .values(created_at=moment)
                )
        query = FiguresQuery(
            "modality", "day", date(2026, 3, 7), date(2026, 3, 9), zoned.figures_time_zone
        )
        figures = compute_figures(archive, query, Prices.of(zoned))
    days = {p.label: c.values["exams"] for p, _, c in figures.rows()}
    assert days == {"2026-03-07": 2, "2026-03-08": 2, "2026-03-09": 1}


def test_periods_between() -> None:
    weeks = periods_between(date(2026, 12, 30), date(2027, 1, 12), "week")
    assert [p.label for p in weeks] == ["2026-W53", "2027-W01", "2027-W02"]
    assert weeks[0].start == date(2026, 12, 30) and weeks[0].end == date(2027, 1, 3)
    months = periods_between(date(2024, 1, 31), date(2024, 3, 1), "month")
    assert [(p.label, p.start, p.end) for p in months] == [
        ("2024-01", date(2024, 1, 31), date(2024, 1, 31)),
        ("2024-02", date(2024, 2, 1), date(2024, 2, 29)),
        ("2024-03", date(2024, 3, 1), date(2024, 3, 1)),
    ]


# ------------------------------------------------------------------------------ CSV, page


def test_csv_export(client: TestClient) -> None:
    answer = ask(client, group="department", period="month", format="csv")
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.content.startswith(b"\xef\xbb\xbf")
    lines = list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))
    assert lines[0] == ["period", "start", "end", "department", *MEASURES]
    want = expected("department", "month")
    got = {}
    for line in lines[1:]:
        values = [int(v) for v in line[4:-1]]
        got[(line[0], line[3])] = {**dict(zip(MEASURES[:-1], values, strict=True)),
                                   "money_saved": float(line[-1])}  # fmt: skip
        assert re.fullmatch(r"-?\d+\.\d\d", line[-1])
    assert got == want
    assert ("2026-04", RADIOLOGY_ZH) in got
    starts = {line[0]: (line[1], line[2]) for line in lines[1:]}
    assert starts["2026-03"] == (str(FIRST), "2026-03-31")


class _Table(HTMLParser):
    """The figures table of the page: (period, group) → {measure: text}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.row: dict[str, str] | None = None
        self.measure: str | None = None
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "tr" and "data-period" in found:
            self.row = self.rows.setdefault(
                (str(found["data-period"]), str(found["data-group"])), {}
            )
        elif tag == "td" and self.row is not None and "data-measure" in found:
            self.measure = str(found["data-measure"])

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.measure is not None:
            self.row[self.measure] = data.strip()
            self.measure = None

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self.row = None


@pytest.mark.parametrize(("group", "period"), [("department", "week"), ("modality", "day")])
def test_the_page_shows_the_figures(client: TestClient, group: str, period: str) -> None:
    params = {"group": group, "period": period, "from": str(FIRST), "to": str(LAST)}
    page = client.get("/staff/figures", params={**params, "lang": "en"})
    assert page.status_code == 200, page.text
    table = _Table()
    table.feed(page.text)
    want = {
        key: {m: f"{v:,.2f}" if m == "money_saved" else f"{v:,}" for m, v in row.items()}
        for key, row in expected(group, period).items()
    }
    assert table.rows == want
    assert {"chart-sheets", "chart-money", "chart-films", "chart-groups"} <= table.ids
    assert "Figures of film saved" in page.text and "unspecified" in page.text
    assert 'id="nav-figures"' in page.text
    assert "/api/figures?" in page.text and "format=csv" in page.text
    assert "<script>" not in page.text and " style=" not in page.text
    chinese = client.get("/staff/figures", params={**params, "lang": "zh"})
    assert "节省胶片统计" in chinese.text and "未指定" in chinese.text
    assert RADIOLOGY_ZH in chinese.text or group == "modality"


def test_the_page_headline(client: TestClient) -> None:
    page = client.get("/staff/figures", params={"from": str(FIRST), "to": str(LAST)})
    tiles = dict(re.findall(r'id="tile-([a-z_]+)"><dt>[^<]*</dt><dd>([^<]*)</dd>', page.text))
    assert tiles["exams"] == "5" and tiles["sheets_captured"] == "6"
    assert tiles["sheets_printed_on_film"] == "3" and tiles["money_saved"] == "CNY 26.50"
    assert tiles["cloud_films_issued"] == "3" and tiles["shares_to_other_hospitals"] == "2"


# ----------------------------------------------------------------------------- bad input

BAD = [
    ({"group": "patient"}, "group must be one of"),
    ({"period": "year"}, "period must be one of"),
    ({"format": "xml"}, "format must be one of"),
    ({"from": "2026-02-30"}, "not a valid date"),
    ({"from": "30/03/2026"}, "YYYY-MM-DD"),
    ({"to": "2026-04-06' OR 1=1 --"}, "YYYY-MM-DD"),
    ({"from": "0001-01-01"}, "before 1900"),
    ({"from": "2026-04-07", "to": "2026-04-06"}, "is after"),
    ({"period": "day", "from": "2025-01-01", "to": "2026-04-06"}, "too long a range"),
    ({"period": "month", "from": "1990-01-01", "to": "2026-04-06"}, "too long a range"),
    ({"institution": ""}, "institution code"),
    ({"institution": "x" * 65}, "institution code"),
    ({"institution": "hosp-z"}, "no institution"),
    ({"user": "admin"}, "unknown parameter"),
]


@pytest.fixture
def empty_client(settings: Settings) -> Iterator[TestClient]:
    with Archive.open(settings) as archive, TestClient(create_app(settings, archive)) as client:
        yield client


def test_bad_parameters_are_400(empty_client: TestClient) -> None:
    for params, reason in BAD:
        answer = empty_client.get("/api/figures", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["error"] == "invalid-query", params
        assert reason in answer.json()["detail"], (params, answer.json())
        page = empty_client.get("/staff/figures", params=params)
        assert page.status_code == 400, params
        assert 'id="figures-error"' in page.text


def test_an_empty_archive_counts_nothing(empty_client: TestClient) -> None:
    body = empty_client.get("/api/figures", params={"period": "month"}).json()
    assert body["rows"] == [] and body["groups"] == [] and len(body["periods"]) == 12
    assert body["totals"] == dict.fromkeys(MEASURES, 0)
    page = empty_client.get("/staff/figures")
    assert page.status_code == 200 and 'id="figures-none"' in page.text


def test_a_repeated_parameter_is_400(empty_client: TestClient) -> None:
    answer = empty_client.get("/api/figures?group=modality&group=institution")
    assert answer.status_code == 400 and "more than once" in answer.json()["detail"]


def test_settings_refuse_bad_prices_and_zones() -> None:
    with pytest.raises(ValidationError, match="film_prices"):
        Settings(film_prices={"15INX15IN": 3.0})
    with pytest.raises(ValidationError, match="film_prices"):
        Settings(film_prices={"A4": -1.0})
    with pytest.raises(ValidationError, match="time zone"):
        Settings(figures_time_zone="Mars/Olympus")
    with pytest.raises(ValidationError, match="film_currency"):
        Settings(film_currency="yuan")
    assert Settings(film_prices={"A3": 4}).film_prices == {"A3": 4.0}


# -------------------------------------------------------------------------------- access


@pytest.fixture
def production(world_archive: Archive) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A production application and a staff cookie for each kind of user."""
    settings = world_archive.settings.model_copy(
        update={"env": "production", "secret_key": "s" * 40}
    )
    accounts = Accounts(world_archive, settings)
    until = utcnow() + timedelta(hours=1)
    cookies = {}
    for name, role, institution in (
        ("a-admin", "admin", A), ("a-tech", "technologist", A), ("a-radio", "radiologist", A),
        ("a-referring", "referring", A), ("b-admin", "admin", B),
        ("platform", "platform-admin", None),
    ):  # fmt: skip
        user = accounts.create_user(name, "a long enough password", role, institution)
        cookies[name] = accounts.session_cookie(user, until)
    _, key = accounts.create_api_key(B, "technologist")
    cookies["b-key"] = key
    with TestClient(create_app(settings, world_archive)) as test_client:
        yield test_client, cookies


def _as(client: TestClient, credential: str | None, path: str, **params: str) -> Any:
    client.cookies.clear()
    headers = {}
    if credential and credential.startswith("cfk_"):
        headers["Authorization"] = f"Bearer {credential}"
    elif credential:
        client.cookies.set(STAFF_COOKIE, credential)
    query = {"from": str(FIRST), "to": str(LAST), **params}
    return client.get(path, params=query, headers=headers, follow_redirects=False)


@pytest.mark.parametrize(
    ("user", "groups"),
    [("a-admin", [A]), ("a-tech", [A]), ("a-radio", [A]), ("b-admin", [B]), ("b-key", [B]),
     ("platform", [A, B])],
)  # fmt: skip
def test_who_sees_which_figures(
    production: tuple[TestClient, dict[str, str]], user: str, groups: list[str]
) -> None:
    client, cookies = production
    body = _as(client, cookies[user], "/api/figures", period="week").json()
    assert body["groups"] == groups
    only = None if len(groups) > 1 else groups[0]
    got = {(r["period"], r["group"]): {m: r[m] for m in MEASURES} for r in body["rows"]}
    assert got == expected("institution", "week", only)
    assert body["institution"] == only
    by_modality = _as(client, cookies[user], "/api/figures", group="modality").json()
    assert by_modality["totals"]["exams"] == (5 if only is None else 3 if only == A else 2)
    page = _as(client, cookies[user], "/staff/figures")
    assert page.status_code == 200


def test_staff_see_only_their_institution(production: tuple[TestClient, dict[str, str]]) -> None:
    client, cookies = production
    assert _as(client, cookies["a-admin"], "/api/figures", institution=B).status_code == 403
    assert _as(client, cookies["a-admin"], "/staff/figures", institution=B).status_code == 403
    mine = _as(client, cookies["a-admin"], "/api/figures", institution=A)
    assert mine.status_code == 200 and mine.json()["groups"] == [A]
    chosen = _as(client, cookies["platform"], "/api/figures", institution=B).json()
    assert chosen["groups"] == [B] and chosen["totals"]["exams"] == 2
    assert (
        _as(client, cookies["platform"], "/api/figures", institution="nowhere").status_code == 400
    )


def test_others_are_refused(production: tuple[TestClient, dict[str, str]]) -> None:
    client, cookies = production
    assert _as(client, cookies["a-referring"], "/api/figures").status_code == 403
    assert _as(client, cookies["a-referring"], "/staff/figures").status_code == 403
    assert _as(client, None, "/api/figures").status_code == 401
    anonymous = _as(client, None, "/staff/figures")
    assert anonymous.status_code == 303 and "/staff/signin" in anonymous.headers["location"]
    assert _as(client, "cfk_000000000000_wrong", "/api/figures").status_code == 401
