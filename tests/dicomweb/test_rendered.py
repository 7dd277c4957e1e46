"""Rendered images and thumbnails over real HTTP, at every level."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import TESTS, LiveServer, part_headers, stow_raw
from PIL import Image
from pydicom.uid import generate_uid

from cloudfilm.archive import Archive
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

TESTDATA = TESTS.parent.parent / "shared" / "testdata"
MULTIFRAME = TESTDATA / "dicomParser" / "encapsulated" / "multi-frame"


def image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture
def stored(live_server: LiveServer) -> dict[str, Any]:
    study, series = generate_uid(), generate_uid()
    cts = [
        make_dataset(
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            InstanceNumber=n,
            WindowCenter=str(900 + n),
            WindowWidth="600",
        )
        for n in (1, 2, 3)
    ]
    cine = (MULTIFRAME / "IM00001.fragmented_no_bot_jpeg_baseline.50.dcm").read_bytes()
    response = stow_raw(live_server.url, [part10(ds) for ds in cts] + [cine])
    assert response.status_code == 200
    cine_ref = response.json()["00081199"]["Value"][3]["00081190"]["Value"][0]
    return {
        "study": f"{live_server.url}/studies/{study}",
        "series": f"{live_server.url}/studies/{study}/series/{series}",
        "instance": f"{live_server.url}/studies/{study}/series/{series}/instances/"
        f"{cts[0].SOPInstanceUID}",
        "cine": cine_ref,
        "cts": cts,
    }


def test_instance_rendered_as_jpeg_and_png(
    client: DICOMwebClient, stored: dict[str, Any], live_server: LiveServer
) -> None:
    jpeg = requests.get(f"{stored['instance']}/rendered", timeout=30)
    assert jpeg.status_code == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    assert image(jpeg.content).size == (128, 128)
    png = requests.get(
        f"{stored['instance']}/rendered", headers={"Accept": "image/png"}, timeout=30
    )
    assert png.headers["Content-Type"] == "image/png"
    as_param = requests.get(f"{stored['instance']}/rendered?accept=image/png", timeout=30)
    assert as_param.content == png.content
    ds = stored["cts"][0]
    via_client = client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/png",)
    )
    assert via_client == png.content


def test_window_changes_the_pixels_and_default_is_the_instances(stored: dict[str, Any]) -> None:
    ds = stored["cts"][0]
    url = f"{stored['instance']}/rendered"
    default = np.asarray(
        image(requests.get(url, params={"accept": "image/png"}, timeout=30).content)
    )
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    same = requests.get(
        url, params={"accept": "image/png", "window": f"{center},{width}"}, timeout=30
    )
    assert np.array_equal(np.asarray(image(same.content)), default)
    narrow = requests.get(url, params={"accept": "image/png", "window": "0,10"}, timeout=30)
    assert not np.array_equal(np.asarray(image(narrow.content)), default)
    sigmoid = requests.get(url, params={"window": "40,400,sigmoid"}, timeout=30)
    assert sigmoid.status_code == 200


def test_viewport_quality_annotation(stored: dict[str, Any]) -> None:
    url = f"{stored['instance']}/rendered"
    small = requests.get(url, params={"viewport": "64,32"}, timeout=30)
    assert image(small.content).size == (32, 32)
    region = requests.get(url, params={"viewport": "100,100,0,0,64,128"}, timeout=30)
    assert image(region.content).size == (50, 100)
    low = requests.get(url, params={"quality": "5"}, timeout=30)
    high = requests.get(url, params={"quality": "100"}, timeout=30)
    assert len(low.content) < len(high.content)
    annotated = requests.get(url, params={"annotation": "patient,technique"}, timeout=30)
    assert annotated.status_code == 200
    plain = requests.get(url, timeout=30)
    assert annotated.content != plain.content


@pytest.mark.parametrize(
    "params",
    [
        {"window": "40"},
        {"window": "40,-1"},
        {"window": "a,b"},
        {"window": "40,400,cubic"},
        {"viewport": "0,0"},
        {"viewport": "99999,10"},
        {"quality": "0"},
        {"quality": "high"},
        {"annotation": "everything"},
    ],
)
def test_bad_parameters_are_400(stored: dict[str, Any], params: dict[str, str]) -> None:
    response = requests.get(f"{stored['instance']}/rendered", params=params, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid-query"


def test_unrenderable_media_type_is_406(stored: dict[str, Any]) -> None:
    response = requests.get(
        f"{stored['instance']}/rendered", headers={"Accept": "image/bmp"}, timeout=30
    )
    assert response.status_code == 406


def test_frames_rendered(stored: dict[str, Any]) -> None:
    cine = stored["cine"]
    one = requests.get(f"{cine}/frames/3/rendered", timeout=30)
    assert one.headers["Content-Type"] == "image/jpeg"
    several = requests.get(
        f"{cine}/frames/1,8/rendered", headers={"Accept": 'multipart/related; type="image/png"'},
        timeout=30,
    )  # fmt: skip
    assert [h["content-type"] for h in part_headers(several)] == ["image/png"] * 2
    assert requests.get(f"{cine}/frames/9/rendered", timeout=30).status_code == 404


def test_multiframe_instance_as_gif(stored: dict[str, Any]) -> None:
    gif = requests.get(f"{stored['cine']}/rendered", headers={"Accept": "image/gif"}, timeout=60)
    assert gif.headers["Content-Type"] == "image/gif"
    animation = image(gif.content)
    assert getattr(animation, "n_frames", 1) == 8
    first = requests.get(f"{stored['cine']}/rendered", timeout=30)
    assert first.headers["Content-Type"] == "image/jpeg"


def test_series_and_study_rendered(stored: dict[str, Any]) -> None:
    single = requests.get(f"{stored['series']}/rendered", timeout=30)
    assert single.headers["Content-Type"] == "image/jpeg"
    middle = requests.get(
        stored["instance"].rsplit("/", 1)[0] + f"/{stored['cts'][1].SOPInstanceUID}/rendered",
        timeout=30,
    )
    assert single.content == middle.content  # the middle instance of the series
    every = requests.get(
        f"{stored['study']}/rendered", headers={"Accept": 'multipart/related; type="image/jpeg"'},
        timeout=60,
    )  # fmt: skip
    assert len(part_headers(every)) == 3  # the cine is in a study of its own


@pytest.mark.parametrize("level", ["study", "series", "instance", "cine"])
def test_thumbnails_at_every_level(stored: dict[str, Any], level: str) -> None:
    response = requests.get(f"{stored[level]}/thumbnail", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    assert max(image(response.content).size) <= 128
    sized = requests.get(f"{stored[level]}/thumbnail", params={"viewport": "48,48"}, timeout=30)
    assert max(image(sized.content).size) <= 48


def test_frame_thumbnail(stored: dict[str, Any]) -> None:
    response = requests.get(f"{stored['cine']}/frames/2/thumbnail", timeout=30)
    assert response.status_code == 200
    assert max(image(response.content).size) <= 128


def test_renderings_are_cached_and_etagged(stored: dict[str, Any], archive: Archive) -> None:
    url = f"{stored['instance']}/rendered"
    first = requests.get(url, params={"viewport": "77,77"}, timeout=30)
    cache = archive.settings.data_dir / "cache" / "rendered"
    assert any(cache.rglob("*.bin"))
    again = requests.get(
        url, params={"viewport": "77,77"}, headers={"If-None-Match": first.headers["ETag"]},
        timeout=30,
    )  # fmt: skip
    assert again.status_code == 304
    for path in cache.rglob("*.bin"):
        path.write_bytes(b"cached")  # what is served comes from the cache
    assert requests.get(url, params={"viewport": "77,77"}, timeout=30).content == b"cached"


def test_no_pixels_is_404(live_server: LiveServer) -> None:
    ds = make_dataset()
    del ds.PixelData
    for keyword in ("Rows", "Columns"):
        delattr(ds, keyword)
    response = stow_raw(live_server.url, [part10(ds)])
    url = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert requests.get(f"{url}/rendered", timeout=30).status_code == 404
    assert requests.get(f"{url}/thumbnail", timeout=30).status_code == 404
