"""The search API (DESIGN §5.4): FastAPI over `SearchService`, OpenAPI docs at /docs.

Read-only over the warehouse: list spaces, get a representation, neighbours of a stored representation and search by
an uploaded array. The documentation pages (/docs, /redoc) work offline: their scripts come with the package.
Filters are fixed query parameters (see `FILTERS`); no SQL is accepted over HTTP. Errors are
``{"detail": "<one line>"}``: 404 unknown space or representation, 413 upload over the size limit, 415 unsupported
media type, 400 unreadable body, 422 invalid input; anything else is a 500 whose traceback stays in the server log.
"""

import io
import json
import logging
import math
from datetime import datetime
from typing import Annotated, Any

import faiss
import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from survey.catalog import Warehouse
from survey.errors import SurveyError, one_line
from survey.metrics.configuration import METRIC_KINDS
from survey.search.space import MAX_K, Neighbor, NotFoundError, SearchService, Space

log = logging.getLogger(__name__)

MAX_URL_BYTES = 8192  # longer request targets get a 414 (arrays go in a POST /search body)
REQUEST_HEAD_BYTES = 4 * 2**20  # what the HTTP parser reads before it gives up (and resets the connection)
NPY = "application/octet-stream"
JSON = "application/json"


class Error(BaseModel):
    detail: str = Field(description="What is wrong, in one line.")


class Health(BaseModel):
    status: str = Field(description='"ok" when the warehouse is readable.')
    spaces: int = Field(description="Number of embedding spaces in the warehouse.")


class SpaceInfo(BaseModel):
    space_id: str
    name: str
    stimset_id: str = Field(description="The stimulus set whose representations the space embeds.")
    metric: str = Field(description="linear | permutation | cka | stochastic | conv")
    alpha: float
    score_method: str = Field(description="angular (radians) | euclidean")
    center: bool
    n_items: int = Field(description="Representations indexed.")
    dim: int = Field(description="Embedding dimension.")
    n_landmarks: int
    landmarks_from: str = Field(description="distance_landmarks (frozen by the distances stage) | maxmin")
    index_kind: str = Field(description="flat (exact) | hnsw (approximate)")
    negative_mass: float | None = Field(description="Landmark MDS: share of negative eigenvalue mass (non-Euclidean).")
    stress: float | None = Field(description="Kruskal stress-1 of the stored vectors over a sample of stored pairs.")
    stress_pairs: int = Field(description="Pairs in that sample.")
    created: datetime


class Representation(BaseModel):
    rep_id: str
    source_kind: str = Field(description="network | session")
    source_id: str
    source_name: str
    layer_or_area: str
    depth: float | None = Field(description="Relative depth in [0, 1].")
    stimset_id: str
    n_stimuli: int
    n_units: int
    family: str | None = Field(description="Networks: zoo | torchvision | timm | callable.")
    objective: str | None = Field(description="Networks: supervised | contrastive | untrained | external.")
    test_accuracy: float | None
    subject: str | None = Field(description="Sessions: the subject.")
    area: str | None = Field(description="Sessions: the brain area.")


class Result(BaseModel):
    rep_id: str
    distance: float
    exact: bool = Field(description="True: the metric's own distance; false: Euclidean distance in the embedding.")
    source_kind: str | None
    source_name: str | None
    layer_or_area: str | None
    area: str | None
    family: str | None
    objective: str | None
    depth: float | None


class Results(BaseModel):
    space_id: str
    query: str = Field(description='The query representation\'s id, or "upload".')
    results: list[Result] = Field(description="Nearest first.")


UPLOAD_LAYOUTS = "; ".join(f"{kind.input_layout} for {name} spaces" for name, kind in METRIC_KINDS.items())
SEARCH_DESCRIPTION = f"""The k nearest stored representations to an uploaded one.

The body is one representation of the space's stimulus set: its stimuli in that set's order along the first axis
({UPLOAD_LAYOUTS}), at most the server's upload limit (64 MiB by default), in one of two
media types:

* `{NPY}`: the bytes of a NumPy `.npy` file as `np.save` writes it (format version 1.0 or 2.0: the magic
  `\\x93NUMPY`, a header dict giving `descr`, `fortran_order` and `shape`, then the raw data). The dtype must be
  real numeric (signed or unsigned integers or floats, either byte order). Object arrays are refused and never
  unpickled; bool, complex, string and structured dtypes are refused too.
* `{JSON}`: `{{"data": [[...], ...]}}`, nested lists of numbers.

Values must be finite with max |value| in [1e-100, 1e100] (float64 linear algebra). The upload is placed by
landmark MDS from its exact distances to the landmarks, then the FAISS shortlist is reranked by exact distances.
"""

UPLOAD_BODY = {
    "required": True,
    "description": "One representation: a .npy file or a JSON object {\"data\": nested lists}; see above.",
    "content": {
        NPY: {"schema": {"type": "string", "format": "binary"}},
        JSON: {"schema": {
            "type": "object", "required": ["data"], "additionalProperties": False,
            "properties": {"data": {
                "type": "array", "description": "m × n numbers: one row of unit responses per stimulus.",
                "items": {"type": "array", "items": {"type": "number"}},
            }},
        }},
    },
}


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _clean(row: dict) -> dict:
    return {key: _finite(value) for key, value in row.items()}


def _results(space: Space, query: str, neighbors: list[Neighbor]) -> Results:
    fields = set(Result.model_fields) - {"rep_id", "distance", "exact"}
    return Results(space_id=space.row["space_id"], query=query, results=[
        Result(rep_id=n.rep_id, distance=n.distance, exact=n.exact,
               **{key: _finite(n.metadata.get(key)) for key in fields})
        for n in neighbors
    ])


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as its declared or actual size passes `limit` bytes."""
    declared = request.headers.get("content-length")
    too_large = f"upload is larger than the limit of {limit} bytes; send a smaller array (e.g. float32, fewer units)"
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise HTTPException(413, f"upload of {int(declared)} bytes: {too_large}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _load_npy(body: bytes) -> np.ndarray:
    """A `.npy` file's array; the header is checked (dtype, size) before any data is read, and nothing unpickled."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported; write it with np.save")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except (ValueError, EOFError, SyntaxError, TypeError) as error:
        raise HTTPException(400, f"body is not a .npy file: {one_line(error)}") from None
    if dtype.hasobject:
        raise HTTPException(422, f"the .npy holds an object array (dtype {dtype}), which would need unpickling; "
                                 "send a numeric array")
    _check_dtype(dtype)
    expected = math.prod(shape) * dtype.itemsize
    if len(body) - stream.tell() != expected:
        raise HTTPException(400, f"the .npy header declares shape {shape} of {dtype} ({expected} bytes of data) but "
                                 f"{len(body) - stream.tell()} bytes follow it; send the whole file")
    return np.load(io.BytesIO(body), allow_pickle=False)


def _load_json(body: bytes) -> np.ndarray:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise HTTPException(400, f"body is not valid JSON: {one_line(error)}") from None
    if not isinstance(document, dict) or set(document) != {"data"}:
        raise HTTPException(422, 'JSON body must be an object with the one key "data": {"data": [[...], ...]}')
    try:
        return np.asarray(document["data"])
    except (ValueError, TypeError, RecursionError) as error:
        raise HTTPException(422, f"data is not a rectangular array of numbers (are rows of different lengths?): "
                                 f"{one_line(error)}") from None


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in "iuf":
        raise HTTPException(422, f"array has dtype {dtype}; send real numbers (integers or floats), not booleans, "
                                 "complex numbers, strings or objects")


def create_app(warehouse_uri: str, max_upload_bytes: int = 64 * 2**20) -> FastAPI:
    """The search API over the warehouse at `warehouse_uri`; uploads over `max_upload_bytes` get a 413."""
    service = SearchService(Warehouse(warehouse_uri).check_catalog())
    app = FastAPIOffline(  # /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN
        title="neurosurvey search",
        description="Nearest representations by shape metric over a neurosurvey warehouse's embedding spaces "
                    "(FAISS shortlist, exact rerank). Errors are `{\"detail\": \"...\"}`.",
        version="1",
    )
    errors: dict[int | str, dict[str, Any]] = {422: {"model": Error, "description": "Invalid input."}}
    not_found = {404: {"model": Error, "description": "Unknown space or representation."}}

    @app.middleware("http")
    async def refuse_long_urls(request: Request, call_next: Any) -> Any:
        length = len(request.scope.get("raw_path", b"")) + len(request.scope.get("query_string", b""))
        if length > MAX_URL_BYTES:
            return JSONResponse({"detail": f"the URL has {length} bytes, over the {MAX_URL_BYTES}-byte limit; send "
                                           "an array in the body of POST /search"}, status_code=414)
        return await call_next(request)

    @app.exception_handler(NotFoundError)
    async def not_found_error(_: Request, error: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(SurveyError)
    async def survey_error(_: Request, error: SurveyError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{' '.join(str(part) for part in problem['loc'])}: {problem['msg']}" for problem in error.errors()
        )
        return JSONResponse({"detail": one_line(problems, 400)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        log.error("search API: unexpected %s", type(error).__name__, exc_info=error)
        return JSONResponse({"detail": "internal server error; the traceback is in the server log"}, status_code=500)

    K = Annotated[int, Query(ge=1, le=MAX_K, description="How many neighbours to return.")]
    SpaceId = Annotated[str | None, Query(description="Space id (GET /spaces); default: the newest that fits.")]
    Filter = Annotated[str | None, Query(description="Keep only representations whose metadata equal this.")]
    Rerank = Annotated[bool, Query(description="Rerank the FAISS shortlist by exact metric distances.")]

    @app.get("/health", response_model=Health)
    def health() -> Health:
        """Liveness, and how many spaces the warehouse holds."""
        return Health(status="ok", spaces=len(service.spaces()))

    @app.get("/spaces", response_model=list[SpaceInfo])
    def spaces() -> list[SpaceInfo]:
        """Every embedding space (one per metric configuration, stimulus set and catalog state)."""
        return [SpaceInfo(**_clean(row)) for row in service.spaces()]

    @app.get("/representations/{rep_id}", response_model=Representation, responses=not_found)
    def representation(rep_id: str) -> Representation:
        """A representation's catalog metadata, with its network's family and objective or session's subject."""
        return Representation(**_clean(service.representation(rep_id)))

    @app.get("/representations/{rep_id}/neighbors", response_model=Results, responses={**not_found, **errors})
    def neighbors(
        rep_id: str, k: K = 10, space: SpaceId = None, source_kind: Filter = None, area: Filter = None,
        family: Filter = None, objective: Filter = None, rerank: Rerank = True,
    ) -> Results:
        """The k nearest stored representations to a stored one (itself excluded), nearest first."""
        keep = service.matching(source_kind=source_kind, area=area, family=family, objective=objective)
        found = service.neighbors(rep_id, k, space, keep=keep, rerank=rerank)
        return _results(service.space(space, rep_id), rep_id, found)

    @app.post(
        "/search", response_model=Results, description=SEARCH_DESCRIPTION, openapi_extra={"requestBody": UPLOAD_BODY},
        responses={**not_found, **errors, 400: {"model": Error, "description": "Unreadable body."},
                   413: {"model": Error, "description": "Upload over the size limit."},
                   415: {"model": Error, "description": "Neither a .npy nor a JSON body."}},
    )
    async def search(
        request: Request, k: K = 10, space: SpaceId = None, source_kind: Filter = None, area: Filter = None,
        family: Filter = None, objective: Filter = None, rerank: Rerank = True,
    ) -> Results:
        """Search by an uploaded representation (.npy or JSON body)."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (NPY, JSON):
            raise HTTPException(415, f"content type {media or 'missing'!r}: send {NPY} (a .npy file) or {JSON} "
                                     '({"data": [[...], ...]})')
        body = await _read_body(request, max_upload_bytes)

        def run() -> Results:
            target = service.space(space)
            array = _load_npy(body) if media == NPY else _load_json(body)
            _check_dtype(array.dtype)
            keep = service.matching(source_kind=source_kind, area=area, family=family, objective=objective)
            found = service.search(array, k, target.row["space_id"], keep=keep, rerank=rerank)
            return _results(target, "upload", found)

        return await run_in_threadpool(run)

    return app


def serve(warehouse_uri: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the search API with uvicorn on `host`:`port` (loopback by default) until interrupted.

    FAISS runs single-threaded here: it parallelises over queries, so one query per request gains nothing from
    more threads and waits for all of them (p50 0.28 ms vs 0.67 ms at 100k vectors, benchmarks/search_latency.py).
    """
    faiss.omp_set_num_threads(1)
    uvicorn.Server(server_config(create_app(warehouse_uri), host=host, port=port)).run()


def server_config(app: FastAPI, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for the API: request heads up to REQUEST_HEAD_BYTES reach the app, so an over-long URL
    gets its 414 instead of a reset connection."""
    return uvicorn.Config(app, h11_max_incomplete_event_size=REQUEST_HEAD_BYTES, **options)
