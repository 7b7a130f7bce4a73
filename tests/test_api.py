"""The search API: a live uvicorn server, exact neighbours equal to brute force, uploads, errors and a fuzz."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from survey.catalog import Warehouse, connect
from survey.config import parse_config
from survey.runtime.survey import run_survey
from survey.search.api import MAX_URL_BYTES, create_app, server_config
from survey.search.space import SearchService

from .conftest import TINY, survey_serve

NPY = {"content-type": "application/octet-stream"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def surveyed(tiny_surveyed) -> tuple[Warehouse, dict]:
    """The TINY survey and its linear α = 0.5 space over the `natural` stimuli."""
    return tiny_surveyed, tiny_surveyed.rows("spaces")[0]


@pytest.fixture(scope="module")
def app(surveyed) -> FastAPI:
    return create_app(surveyed[0].uri)


@contextmanager
def serving(app: FastAPI) -> Iterator[httpx.Client]:
    """A real uvicorn server for `app` on a loopback port the OS picked, and an HTTP client for it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    host, port = sock.getsockname()
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def live(app) -> Iterator[httpx.Client]:
    with serving(app) as client:
        yield client


def rep_ids(warehouse: Warehouse, stimset_id: str) -> list[str]:
    rows = connect(warehouse).execute("SELECT rep_id FROM representations WHERE stimset_id = ? ORDER BY rep_id",
                                      [stimset_id]).fetchall()
    return [row[0] for row in rows]


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def stored_array(warehouse: Warehouse, rep_id: str) -> np.ndarray:
    row = next(row for row in warehouse.rows("representations") if row["rep_id"] == rep_id)
    return warehouse.load_array(row["array_uri"])


def test_live_server_serves_health_spaces_representations_and_docs(live, surveyed) -> None:
    warehouse, space = surveyed
    assert live.get("/health").json() == {"status": "ok", "spaces": 1}
    (listed,) = live.get("/spaces").json()
    assert {key: listed[key] for key in ("space_id", "stimset_id", "metric", "alpha", "n_items", "index_kind")} == {
        key: space[key] for key in ("space_id", "stimset_id", "metric", "alpha", "n_items", "index_kind")}
    assert listed["n_items"] == len(rep_ids(warehouse, space["stimset_id"])) == 20
    rep_id = rep_ids(warehouse, space["stimset_id"])[0]
    got = live.get(f"/representations/{rep_id}")
    assert got.status_code == 200 and got.json()["rep_id"] == rep_id
    assert got.json()["stimset_id"] == space["stimset_id"] and got.json()["n_stimuli"] == 24
    docs = live.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = live.get("/openapi.json").json()
    assert schema["info"]["title"] == "neurosurvey search"
    assert set(schema["paths"]) == {"/health", "/spaces", "/representations/{rep_id}",
                                    "/representations/{rep_id}/neighbors", "/search"}
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/octet-stream", "application/json"}
    assert ".npy" in schema["paths"]["/search"]["post"]["description"]


@pytest.mark.parametrize("filters", [{}, {"source_kind": "session"}, {"source_kind": "network"}, {"area": "V1"},
                                     {"objective": "untrained", "family": "zoo"}], ids=str)
def test_neighbors_are_exact_sorted_filtered_and_equal_brute_force(live, surveyed, filters) -> None:
    warehouse, space = surveyed
    metadata = {row["rep_id"]: row for row in (live.get(f"/representations/{rep}").json()
                                               for rep in rep_ids(warehouse, space["stimset_id"]))}
    distances = connect(warehouse).execute(
        """SELECT rep_a, rep_b, distance FROM shape_distances WHERE stimset_id = ? AND metric = 'linear'
           AND alpha = 0.5""", [space["stimset_id"]]).fetchall()
    k = 5
    for query in list(metadata)[::3]:
        response = live.get(f"/representations/{query}/neighbors", params={"k": k, **filters})
        assert response.status_code == 200, response.text
        got = response.json()
        assert (got["space_id"], got["query"]) == (space["space_id"], query)
        results = got["results"]
        assert all(r["exact"] for r in results) and query not in {r["rep_id"] for r in results}
        assert [r["distance"] for r in results] == sorted(r["distance"] for r in results)
        assert all(r[key] == value for r in results for key, value in filters.items())
        truth = sorted((d, b if a == query else a) for a, b, d in distances if query in (a, b)
                       and all(metadata[b if a == query else a][key] == value for key, value in filters.items()))
        assert len(results) == min(k, len(truth))
        recall = len({r["rep_id"] for r in results} & {rep for _, rep in truth[:k]}) / len(truth[:k])
        assert recall == 1.0
        np.testing.assert_allclose([r["distance"] for r in results], [d for d, _ in truth[:k]], rtol=0, atol=1e-12)


def test_neighbors_without_rerank_are_embedded_distances(live, surveyed) -> None:
    warehouse, space = surveyed
    query = rep_ids(warehouse, space["stimset_id"])[0]
    results = live.get(f"/representations/{query}/neighbors", params={"k": 3, "rerank": "false"}).json()["results"]
    assert len(results) == 3 and not any(r["exact"] for r in results)


@pytest.mark.parametrize("k", ["0", "1001", "-3", "ten"])
def test_bad_k_is_a_422_naming_k(live, surveyed, k) -> None:
    warehouse, space = surveyed
    query = rep_ids(warehouse, space["stimset_id"])[0]
    response = live.get(f"/representations/{query}/neighbors", params={"k": k})
    assert response.status_code == 422 and "k" in response.json()["detail"]


@pytest.mark.parametrize("media", ["npy", "json"])
def test_upload_of_a_stored_array_finds_itself_first_at_distance_zero(live, surveyed, media) -> None:
    warehouse, space = surveyed
    for query in rep_ids(warehouse, space["stimset_id"])[::4]:
        array = stored_array(warehouse, query)
        if media == "npy":
            response = live.post("/search", content=npy_bytes(array), headers=NPY, params={"k": 4})
        else:
            response = live.post("/search", json={"data": array.tolist()}, params={"k": 4})
        assert response.status_code == 200, response.text
        got = response.json()
        assert (got["space_id"], got["query"]) == (space["space_id"], "upload")
        first, *rest = got["results"]
        assert first["rep_id"] == query and first["exact"] and first["distance"] == pytest.approx(0, abs=1e-6)
        assert all(r["exact"] and r["distance"] > 1e-3 for r in rest)
        assert [r["distance"] for r in got["results"]] == sorted(r["distance"] for r in got["results"])


def test_upload_respects_filters(live, surveyed) -> None:
    warehouse, space = surveyed
    query = next(rep for rep in rep_ids(warehouse, space["stimset_id"])
                 if live.get(f"/representations/{rep}").json()["source_kind"] == "network")
    response = live.post("/search", content=npy_bytes(stored_array(warehouse, query)), headers=NPY,
                         params={"k": 3, "source_kind": "session", "area": "IT"})
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 2  # two synthetic sessions, one IT each
    assert all(r["source_kind"] == "session" and r["area"] == "IT" and r["exact"] for r in results)


class Tripwire:
    """Unpickling this calls `trip`: the server must refuse object arrays without ever loading them."""

    def __reduce__(self) -> tuple:
        return trip, ()


TRIPPED: list[bool] = []


def trip() -> None:
    TRIPPED.append(True)


def bad_uploads() -> list[tuple[str, bytes, dict, int, str]]:
    good = npy_bytes(np.random.default_rng(0).normal(size=(24, 6)))
    nan = np.random.default_rng(0).normal(size=(24, 6))
    nan[[0, 3, 5], 1] = np.nan
    return [
        ("garbage npy", b"this is not an npy file at all", NPY, 400, "not a .npy file"),
        ("truncated npy", good[:-8], NPY, 400, "bytes follow it"),
        ("npz archive", b"PK\x03\x04" + good, NPY, 400, "not a .npy file"),
        ("pickled objects", npy_bytes(np.array([Tripwire(), 1], dtype=object), allow_pickle=True), NPY, 422,
         "object array"),
        ("NaN npy", npy_bytes(nan), NPY, 422, "has 3 non-finite values"),
        ("inf json", b'{"data": [[1, Infinity], [0, 2]]}', JSON, 422, "has 1 non-finite values"),
        ("NaN json", json.dumps({"data": nan.tolist()}).encode(), JSON, 422, "has 3 non-finite values"),
        ("1-D", npy_bytes(np.arange(24.0)), NPY, 422, "2-D"),
        ("3-D", npy_bytes(np.ones((24, 2, 3))), NPY, 422, "2-D"),
        ("wrong stimuli", npy_bytes(np.random.default_rng(1).normal(size=(7, 5))), NPY, 422, "7 stimuli"),
        ("empty npy", npy_bytes(np.zeros((24, 0))), NPY, 422, "empty"),
        ("empty json", b'{"data": []}', JSON, 422, "shape (0,)"),
        ("strings", npy_bytes(np.full((24, 3), "x")), NPY, 422, "dtype <U1"),
        ("bools", npy_bytes(np.ones((24, 3), bool)), NPY, 422, "dtype bool"),
        ("complex", npy_bytes(np.ones((24, 3), complex)), NPY, 422, "dtype complex128"),
        ("bool json", b'{"data": [[true, false]]}', JSON, 422, "dtype bool"),
        ("string json", b'{"data": [["a", "b"]]}', JSON, 422, "dtype <U1"),
        ("ragged json", b'{"data": [[1, 2], [3]]}', JSON, 422, "rows of different lengths"),
        ("malformed json", b'{"data": [[1, 2]', JSON, 400, "not valid JSON"),
        ("json without data", b'{"array": [[1, 2]]}', JSON, 422, '"data"'),
        ("huge values", json.dumps({"data": (np.eye(24, 3) * 1e200).tolist()}).encode(), JSON, 422, "rescale"),
        ("constant", npy_bytes(np.ones((24, 3))), NPY, 422, "constant"),
        ("no content type", good, {}, 415, "application/octet-stream"),
        ("text", b"1 2 3", {"content-type": "text/plain"}, 415, "text/plain"),
    ]


@pytest.mark.parametrize(("body", "headers", "status", "message"),
                         [case[1:] for case in bad_uploads()], ids=[case[0] for case in bad_uploads()])
def test_bad_upload_is_a_4xx_saying_what_is_wrong(live, body, headers, status, message) -> None:
    response = live.post("/search", content=body, headers=headers)
    assert (response.status_code, response.headers["content-type"]) == (status, "application/json"), response.text
    assert message in response.json()["detail"]
    assert not TRIPPED


def test_upload_over_the_limit_is_a_413_before_or_while_reading(surveyed) -> None:
    app = create_app(surveyed[0].uri, max_upload_bytes=1000)
    body = npy_bytes(np.random.default_rng(0).normal(size=(24, 6)))  # 1280 bytes
    with serving(app) as client:
        declared = client.post("/search", content=body, headers=NPY)
        streamed = client.post("/search", content=iter([body[:600], body[600:]]), headers=NPY)  # chunked
        small = client.post("/search", content=npy_bytes(np.ones((24, 2))), headers=NPY)
    assert declared.status_code == streamed.status_code == 413
    assert "1280 bytes" in declared.json()["detail"]
    assert all("limit of 1000 bytes" in r.json()["detail"] for r in (declared, streamed))
    assert "Transfer-Encoding" not in declared.request.headers and "Content-Length" not in streamed.request.headers
    assert small.status_code == 422  # under the limit: read, then refused as constant


def test_unknown_space_or_representation_is_a_404_naming_it(live, surveyed) -> None:
    warehouse, space = surveyed
    rep_id = rep_ids(warehouse, space["stimset_id"])[0]
    array = npy_bytes(stored_array(warehouse, rep_id))
    responses = {
        "rep-nope": live.get("/representations/rep-nope"),
        "rep-gone": live.get("/representations/rep-gone/neighbors"),
        "space-nope": live.get(f"/representations/{rep_id}/neighbors", params={"space": "space-nope"}),
        "space-void": live.post("/search", content=array, headers=NPY, params={"space": "space-void"}),
    }
    for name, response in responses.items():
        assert response.status_code == 404 and name in response.json()["detail"], response.text
    grid = next(row["stimset_id"] for row in warehouse.rows("stimulus_sets") if row["name"] == "grid")
    outside = live.get(f"/representations/{rep_ids(warehouse, grid)[0]}/neighbors")  # no space over `grid`
    assert outside.status_code == 404 and "is not in space" in outside.json()["detail"]


def test_unexpected_error_is_a_500_without_traceback(surveyed, monkeypatch) -> None:
    def broken(self: SearchService) -> list[dict]:
        raise RuntimeError("a bug in the service, with a secret path /srv/x")

    monkeypatch.setattr(SearchService, "spaces", broken)
    with serving(create_app(surveyed[0].uri)) as client:
        response = client.get("/health")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; the traceback is in the server log"}


@pytest.fixture(scope="module")
def api_schema(app) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


FUZZED = [  # negative cases need a constraint to break: /health, /spaces and a bare string id have none
    ("/health", "GET", "positive"), ("/spaces", "GET", "positive"), ("/representations/{rep_id}", "GET", "positive"),
    *[(path, method, mode) for path, method in [("/representations/{rep_id}/neighbors", "GET"), ("/search", "POST")]
      for mode in ("positive", "negative")],
]


@pytest.mark.parametrize(("path", "method", "mode"), FUZZED)
def test_schema_fuzzed_requests_never_get_a_server_error(api_schema, surveyed, path, method, mode) -> None:
    # Schemathesis's own pytest loader (`schemathesis.pytest.from_fixture`) fails under pytest 9 (it reads the
    # removed `Function._nodeid`), so the operation's strategy runs under a plain Hypothesis test.
    warehouse, space = surveyed
    operation = api_schema[path][method]
    strategy = operation.as_strategy(GenerationMode(mode))
    if "{rep_id}" in path:  # random ids and stored ones, so that neighbours are searched, not only 404s
        stored = rep_ids(warehouse, space["stimset_id"])
        strategy = strategy | st.sampled_from(stored).flatmap(
            lambda rep: operation.as_strategy(GenerationMode(mode), path_parameters={"rep_id": rep}))

    @given(case=strategy)
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    check()


@given(array=hnp.arrays(st.sampled_from([np.float64, np.float32, np.int16, np.uint8]),
                        st.tuples(st.sampled_from([24, 23]), st.integers(1, 6)),
                        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": True}),
       rerank=st.booleans(), k=st.integers(1, 30))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_fuzzed_arrays_get_results_or_a_422(live, array, rerank, k) -> None:
    response = live.post("/search", content=npy_bytes(array), headers=NPY, params={"k": k, "rerank": rerank})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        results = response.json()["results"]
        assert len(results) == min(k, 20) and all(r["exact"] == rerank for r in results)
        assert [r["distance"] for r in results] == sorted(r["distance"] for r in results)
    else:
        assert response.json()["detail"]


def test_survey_serve_command_serves_on_loopback(surveyed) -> None:
    with survey_serve(surveyed[0].uri) as url:
        assert httpx.get(f"{url}/health", timeout=5).json() == {"status": "ok", "spaces": 1}
        assert httpx.get(f"{url}/docs", timeout=5).status_code == 200


def test_a_space_built_while_survey_serve_runs_is_served_without_a_5xx(surveyed, tmp_path) -> None:
    """`survey serve` re-reads the catalog when its tables get new versions: the new space, its representations'
    metadata and uploads against it are served at once (a stale cache used to answer 404 and 500 here)."""
    import shutil

    copy = Warehouse(shutil.copytree(surveyed[0].root, tmp_path / "wh"))
    with survey_serve(copy.uri) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["spaces"] == 1
        spec = {"metric": {"metric": "permutation", "score": "euclidean"}, "stimuli": "natural", "dim": 4}
        run_survey(parse_config({**TINY, "spaces": {"build": [spec]}}), copy, stages=("spaces",), progress=False)
        time.sleep(SearchService.CATALOG_CHECK_S)
        listed = client.get("/spaces").json()
        assert len(listed) == 2
        new = next(row for row in listed if row["metric"] == "permutation")
        for rep in rep_ids(copy, new["stimset_id"])[:4]:
            response = client.get(f"/representations/{rep}/neighbors", params={"k": 3, "space": new["space_id"]})
            assert response.status_code == 200, response.text
            assert len(response.json()["results"]) == 3 and response.json()["space_id"] == new["space_id"]
        upload = client.post("/search", params={"k": 3, "space": new["space_id"]}, headers=NPY,
                             content=npy_bytes(stored_array(copy, rep_ids(copy, new["stimset_id"])[0])))
        assert upload.status_code == 200, upload.text
        assert upload.json()["results"][0]["distance"] == pytest.approx(0.0, abs=1e-9)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]


def test_docs_render_offline_in_headless_chromium(live, tmp_path) -> None:
    """/docs and /redoc load their scripts from this server (the assets ship with fastapi-offline), so a browser
    with no network renders every operation."""
    import os
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run); it is missing")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    for page in ("/docs", "/redoc"):
        html = live.get(page).text
        assert "cdn." not in html and "https://" not in html, html
        assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
        assert assets and all(live.get(asset).status_code == 200 for asset in assets), assets
    shown = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                            str(live.base_url.join("/docs"))], capture_output=True, text=True, timeout=120)
    for path in ("/health", "/spaces", "/representations/{rep_id}", "/representations/{rep_id}/neighbors", "/search"):
        assert f'class="opblock-summary-path" data-path="{path}"' in shown.stdout, shown.stderr[-2000:]


def test_an_over_long_url_gets_414_not_a_reset(live) -> None:
    """A 1 MB request target (over what HTTP clients will even build, so sent by hand) is answered, not reset."""
    with socket.create_connection((live.base_url.host, live.base_url.port), timeout=60) as sock:
        sock.sendall(b"GET /spaces?pad=" + b"x" * 2**20 + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414"), head
    assert str(MAX_URL_BYTES) in json.loads(body)["detail"]
    assert live.get("/health").status_code == 200
