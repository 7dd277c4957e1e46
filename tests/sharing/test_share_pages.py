"""The pages of a link over real HTTP: code entry, lockout, 410 pages, renewal, languages."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
import requests
from share_support import People, ThreadServer, token_of, unlock
from sqlalchemy import update

from cloudfilm.archive import Archive
from cloudfilm.index.models import Share
from cloudfilm.sharing.links import ShareLinks, ShareRequest, utcnow

pytestmark = pytest.mark.db
ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}
EN = {"Accept-Language": "en-GB,en;q=0.9"}


def set_times(archive: Archive, share_id: str, **values: object) -> None:
    with archive.sessions.begin() as session:
        session.execute(update(Share).where(Share.id == share_id).values(**values))


def wrong(code: str | None) -> str:
    return "000000" if code != "000000" else "111111"


def test_code_page_then_patient_page(
    origin: str, people: People, links: ShareLinks, serve: Callable[..., ThreadServer]
) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    token = token_of(issued.link)
    browser = requests.Session()
    browser.headers.update(EN)
    page = browser.get(f"{origin}/s/{token}", timeout=30)
    assert page.status_code == 200
    assert 'name="answer"' in page.text and "6-digit access code" in page.text
    for secret in (people.a1.study, "CT chest", "Zhang", "ACC-A1", "script"):
        assert secret not in page.text  # nothing about the exam before the code
    assert page.headers["Referrer-Policy"] == "no-referrer"
    refused = unlock(browser, origin, token, wrong(issued.code))
    assert refused.status_code == 401 and "not right" in refused.text
    assert "4 attempts left" in refused.text
    passed = unlock(browser, origin, token, f"{issued.code[:3]} {issued.code[3:]}")  # type: ignore[index]
    assert passed.status_code == 303 and passed.headers["location"] == f"/s/{token}"
    cookie = passed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and f"Path=/s/{token}" in cookie
    assert "Secure" not in cookie  # plain http on loopback; https requests get Secure:
    tls_proxy = {"X-Forwarded-Proto": "https"}
    not_trusted = requests.post(
        f"{origin}/s/{token}/unlock", data={"answer": issued.code}, allow_redirects=False,
        headers=tls_proxy, timeout=30,
    )  # fmt: skip
    assert "Secure" not in not_trusted.headers["set-cookie"]  # loopback is no proxy of ours
    behind_tls = requests.post(
        f"{serve(trusted_proxies=['127.0.0.1']).origin}/s/{token}/unlock",
        data={"answer": issued.code}, allow_redirects=False, headers=tls_proxy, timeout=30,
    )  # fmt: skip
    assert "Secure" in behind_tls.headers["set-cookie"]
    assert re.search(r"Max-Age=43200\b", cookie)
    opened = browser.get(f"{origin}/s/{token}", headers=EN, timeout=30)
    assert opened.status_code == 200 and "CT chest A1" in opened.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in opened.text
    assert "<script>alert(1)" not in opened.text
    # the cookie belongs to this link only: another link of the same study still asks
    other = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    other_path = f"{origin}/s/{token_of(other.link)}"
    value = browser.cookies.get("cloudfilm_share")
    stolen = requests.get(other_path, cookies={"cloudfilm_share": value}, headers=EN, timeout=30)
    assert 'name="answer"' in stolen.text and "CT chest" not in stolen.text


def test_patient_checks_in_both_languages(origin: str, people: People, links: ShareLinks) -> None:
    birth = token_of(links.issue(ShareRequest(study_uids=[people.a1.study],
                                              secret="birth-date")).link)  # fmt: skip
    page = requests.get(f"{origin}/s/{birth}", headers=ZH, timeout=30)
    assert "出生日期" in page.text and 'type="date"' in page.text
    browser = requests.Session()
    bad = unlock(browser, origin, birth, "1980-13-40")
    assert bad.status_code == 400 and "年、月、日" in bad.text
    assert unlock(browser, origin, birth, "1980-05-18").status_code == 401
    assert unlock(browser, origin, birth, "1980-05-17").status_code == 303
    assert "CT chest A1" in browser.get(f"{origin}/s/{birth}", timeout=30).text
    suffix = token_of(links.issue(ShareRequest(study_uids=[people.a1.study],
                                               secret="id-suffix")).link)  # fmt: skip
    page = requests.get(f"{origin}/s/{suffix}?lang=en", timeout=30)
    assert "last 4 characters" in page.text
    assert unlock(browser, origin, suffix, "1234").status_code == 303


def test_lockout_message_with_time_left(origin: str, people: People, links: ShareLinks) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    token = token_of(issued.link)
    statuses = [unlock(requests.Session(), origin, token, wrong(issued.code)).status_code
                for _ in range(5)]  # fmt: skip
    # (five different browsers on one address: both the share and the client are now locked)
    assert statuses == [401, 401, 401, 401, 429]
    locked = unlock(requests.Session(), origin, token, issued.code or "")
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 14 * 60
    page = requests.get(f"{origin}/s/{token}", headers=EN, timeout=30)
    assert "try again in 15 minutes" in page.text and "disabled" in page.text
    page_zh = requests.get(f"{origin}/s/{token}", headers=ZH, timeout=30)
    assert "15 分钟后再试" in page_zh.text


def test_revoked_and_expired_links_get_a_clear_410(
    origin: str, archive: Archive, people: People, links: ShareLinks
) -> None:
    revoked = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    links.revoke(revoked.info.id)
    for headers, words in ((EN, "withdrawn"), (ZH, "已撤回")):
        page = requests.get(f"{origin}/s/{token_of(revoked.link)}", headers=headers, timeout=30)
        assert page.status_code == 410 and words in page.text
        assert "renew" not in page.text.lower() and "Traceback" not in page.text
        assert page.headers["Content-Type"].startswith("text/html")
    api = requests.get(f"{origin}/s/{token_of(revoked.link)}/dicomweb/studies", timeout=30)
    assert api.status_code == 410 and api.json()["error"] == "gone"
    open_link = links.issue(ShareRequest(study_uids=[people.a1.study]))
    set_times(archive, open_link.info.id, expires_at=utcnow() - timedelta(days=1))
    page = requests.get(f"{origin}/s/{token_of(open_link.link)}", headers=EN, timeout=30)
    assert page.status_code == 410 and "has expired" in page.text
    assert "/renew" not in page.text  # no code or check: only staff may renew it
    not_yet = links.issue(
        ShareRequest(study_uids=[people.a1.study], not_before=utcnow() + timedelta(days=2))
    )
    page = requests.get(f"{origin}/s/{token_of(not_yet.link)}", headers=EN, timeout=30)
    assert page.status_code == 403 and "opens on" in page.text


def test_expired_link_renewed_after_the_check(
    origin: str, archive: Archive, people: People, links: ShareLinks
) -> None:
    issued = links.issue(
        ShareRequest(study_uids=[people.a1.study], secret="code", permissions=["reshare"])
    )
    token = token_of(issued.link)
    child = links.reshare(issued.info.id, ShareRequest())
    yesterday = utcnow() - timedelta(days=1)
    set_times(archive, issued.info.id, expires_at=yesterday)
    page = requests.get(f"{origin}/s/{token}", headers=ZH, timeout=30)
    assert page.status_code == 410 and "续期" in page.text and f"/s/{token}/renew" in page.text
    browser = requests.Session()
    refused = browser.post(f"{origin}/s/{token}/renew", data={"answer": wrong(issued.code)},
                           headers=EN, allow_redirects=False, timeout=30)  # fmt: skip
    assert refused.status_code == 401 and "not right" in refused.text
    assert links.get(issued.info.id).expires_at < utcnow()
    renewed = browser.post(f"{origin}/s/{token}/renew", data={"answer": issued.code},
                           allow_redirects=False, timeout=30)  # fmt: skip
    assert renewed.status_code == 303
    assert links.get(issued.info.id).expires_at - utcnow() > timedelta(days=364)
    assert "CT chest A1" in browser.get(f"{origin}/s/{token}", timeout=30).text
    accesses = browser.get(f"{origin}/s/{token}/api/accesses", timeout=30).json()["accesses"]
    assert [a["action"] for a in accesses][:2] == ["open", "renew"]
    # a reshare is never renewed by its holder: the patient makes a new one
    set_times(archive, child.info.id, expires_at=yesterday)
    page = requests.get(f"{origin}/s/{token_of(child.link)}", headers=EN, timeout=30)
    assert page.status_code == 410 and "Ask the person who shared it" in page.text
    post = requests.post(f"{origin}/s/{token_of(child.link)}/renew", data={"answer": "x"},
                         allow_redirects=False, timeout=30)  # fmt: skip
    assert post.status_code == 410


@pytest.mark.parametrize(
    "path",
    ["/s/short", "/s/AAAAAAAAAAAAAAAAAAAAA%21", "/s/%3Cscript%3Ealert(1)%3C%5Cscript%3E",
     "/s/" + "A" * 22, "/s/" + "A" * 5000, "/s/%00%ff%fe"],
)  # fmt: skip
def test_unknown_or_malformed_tokens_are_a_clean_404(origin: str, path: str) -> None:
    page = requests.get(origin + path, headers=EN, timeout=30)
    assert page.status_code == 404 and "Link not found" in page.text
    assert "<script>alert" not in page.text
    api = requests.get(origin + path + "/dicomweb/studies", timeout=30)
    assert api.status_code == 404
    post = requests.post(origin + path + "/unlock", data={"answer": "123456"}, timeout=30)
    assert post.status_code == 404


def test_hostile_forms_are_refused_cleanly(origin: str, people: People, links: ShareLinks) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    url = f"{origin}/s/{token_of(issued.link)}/unlock"
    huge = requests.post(url, data={"answer": "1" * 100_000}, timeout=30)
    assert huge.status_code == 413
    long_answer = requests.post(url, data={"answer": "1" * 70}, timeout=30)
    assert long_answer.status_code == 400
    letters = requests.post(url, data={"answer": "abcdef"}, timeout=30)
    assert letters.status_code == 400
    as_json = requests.post(url, json={"answer": "123456"}, timeout=30)
    assert as_json.status_code == 415
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    binary = requests.post(url, data=b"answer=\xff\xfe", headers=form, timeout=30)
    assert binary.status_code == 400
    # none of these counted as a wrong code
    assert links.lockout.check([("share", issued.info.id)], utcnow()).remaining == 5


def test_the_page_shows_who_opened_and_the_reshare_form(
    origin: str, people: People, links: ShareLinks
) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code",
                                      permissions=["reshare", "download"]))  # fmt: skip
    token = token_of(issued.link)
    doctor_link = links.reshare(issued.info.id, ShareRequest(label="王医生"))
    iphone = {"User-Agent": "Mozilla/5.0 (iPhone) Safari/604.1"}
    doctor_url = doctor_link.link.replace("http://127.0.0.1:8080", origin)
    requests.get(doctor_url, headers=iphone, timeout=30)
    patient = requests.Session()
    patient.headers.update({**ZH, "User-Agent": "Mozilla/5.0 (Linux; Android 14) MicroMessenger"})
    unlock(patient, origin, token, issued.code or "")
    page = patient.get(f"{origin}/s/{token}", timeout=30).text
    panel = page[page.index('id="share-panel"') :]
    assert "谁查看了我的影像" in panel
    accesses = panel[panel.index('id="share-accesses"') :]
    assert "通过王医生打开" in accesses and "Safari · iPhone" in accesses
    assert "通过您的链接打开" in accesses and "WeChat · Android" in accesses
    assert "127.0.0.0/24" in accesses
    assert 'action="/s/' + token + '/reshares"' in panel and 'name="include_prior"' in panel
    assert f"/s/{token}/download.zip" in page  # the originals, as a plain link
    english = patient.get(f"{origin}/s/{token}?lang=en", timeout=30).text
    assert "Who opened my images" in english and "opened through 王医生" in english
    plain = links.issue(ShareRequest(study_uids=[people.a1.study]))
    view_only = requests.get(plain.link.replace("http://127.0.0.1:8080", origin), timeout=30)
    assert "reshare-form" not in view_only.text and "download.zip" not in view_only.text
