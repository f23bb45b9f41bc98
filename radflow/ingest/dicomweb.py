"""A DICOMweb archive (a PACS, a vendor-neutral archive, a cloud healthcare API) as a source.

The source URL is the service root with a ``dicomweb+`` prefix: ``dicomweb+https://pacs.example/dicom-web``.
Discovery asks QIDO-RS for the instances that match the run's query, page by page (``limit``/``offset``, so
a query that matches 400k instances is never one response). The header index reads each instance's
metadata (WADO-RS ``/metadata``, no pixel data); the batch that writes the instance retrieves it once as
``application/dicom`` in the transfer syntax the archive holds (``transfer-syntax=*``), so the stored frames
are those of the archive's own file. The HTTP work (sessions, retries with exponential back-off on
408/429/502/503/504, multipart decoding) is ``dicomweb-client``'s.

Each instance is an input addressed by ``dicomweb+<service>/studies/<study>/series/<series>/instances/<sop>``;
the tables record it as ``dicomweb+<service>/instances/<pseudonym>``, the SOP Instance UID remapped with the
store's key, so no original UID is written and a later run recognises the instance by recomputation.

Credentials come from the settings (``RADFLOW_DICOMWEB__TOKEN``, ``…__USERNAME`` and ``…__PASSWORD``, or
``…__CREDENTIALS_FILE``), never from the URL, and are never logged. ``RADFLOW_DICOMWEB__MAX_CONCURRENCY``
bounds the requests of one run across all its workers (the flow hands the workers a cluster-wide semaphore
as ``storage_options["dicomweb"]["slots"]``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
from typing import Any, Iterator
from urllib.parse import urlsplit

from radflow.config import DicomWebSettings
from radflow.errors import ConfigError, InputRejected, Reason, SourceUnavailable

__all__ = ["SCHEME", "is_dicomweb", "service_url", "instance_uri", "parse_instance_uri", "source_of",
           "search", "discover", "retrieve", "metadata", "client", "check", "SourceRefused", "options", "first_value",
           "uids_of", "ReadAhead"]

log = logging.getLogger(__name__)

SCHEME = "dicomweb+"
_FIELDS = ("0020000D", "0020000E", "00080018")
_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: statuses retried with back-off (the archive or a gateway in front of it is busy or briefly away)
_RETRIED = (408, 429, 502, 503, 504)


class SourceRefused(ConfigError):
    """The archive refused the run (401, 403, 404 on the service): nothing is retried."""


def is_dicomweb(url: str) -> bool:
    return url.startswith((SCHEME + "http://", SCHEME + "https://"))


def service_url(url: str) -> str:
    """The HTTP(S) service root of a ``dicomweb+…`` URL (without a trailing slash or an instance path);
    a URL that carries credentials is refused (they would end up in logs and the store)."""
    if not is_dicomweb(url):
        raise ConfigError(f"{url!r} is not a DICOMweb URL (dicomweb+http://… or dicomweb+https://…)")
    http = url[len(SCHEME):]
    parts = urlsplit(http)
    if parts.username or parts.password:
        raise ConfigError("a DICOMweb URL must not carry credentials (they would be logged and recorded); "
                          "set RADFLOW_DICOMWEB__TOKEN, or RADFLOW_DICOMWEB__USERNAME and …__PASSWORD")
    if parts.query or parts.fragment:
        raise ConfigError(f"a DICOMweb URL has no query part; filter with --query KEY=VALUE ({url!r})")
    return http.split("/studies/", 1)[0].rstrip("/")


def instance_uri(service: str, study: str, series: str, sop: str) -> str:
    return f"{SCHEME}{service}/studies/{study}/series/{series}/instances/{sop}"


def parse_instance_uri(uri: str) -> tuple[str, str, str, str]:
    """``(service, study, series, sop)`` of an instance URI."""
    http = uri[len(SCHEME):]
    service, _, rest = http.partition("/studies/")
    study, _, rest = rest.partition("/series/")
    series, _, sop = rest.partition("/instances/")
    if not (study and series and sop):
        raise InputRejected(Reason.IO_ERROR, "not a DICOMweb instance address")
    return service, study, series, sop


def source_of(service: str, pseudonym: str) -> str:
    """What the tables record for an instance: the service and its keyed SOP Instance UID."""
    return f"{SCHEME}{service}/instances/{pseudonym}"


def options(storage_options: dict[str, Any] | None) -> tuple[DicomWebSettings, Any]:
    """The DICOMweb settings and the request slots (a semaphore, or None) carried in ``storage_options``."""
    opts = (storage_options or {}).get("dicomweb") or {}
    return opts.get("settings") or DicomWebSettings(), opts.get("slots")


@functools.lru_cache(maxsize=8)
def _cached_client(service: str, auth: tuple[str, ...], timeout_s: float, attempts: int, backoff_ms: int):
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if auth and auth[0] == "bearer":
        session.headers["Authorization"] = f"Bearer {auth[1]}"
    elif auth:
        session.auth = (auth[1], auth[2])
    c = DICOMwebClient(service, session=session, timeout=timeout_s)
    c.set_http_retry_params(retry=True, max_attempts=attempts, wait_exponential_multiplier=backoff_ms,
                            retriable_error_codes=_RETRIED)
    return c


def _auth(settings: DicomWebSettings) -> tuple[str, ...]:
    token = settings.token.get_secret_value() if settings.token else ""
    user = settings.username or ""
    password = settings.password.get_secret_value() if settings.password else ""
    if settings.credentials_file and not (token or password):
        try:
            found = json.loads(settings.credentials_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"RADFLOW_DICOMWEB__CREDENTIALS_FILE cannot be read as JSON ({type(exc).__name__}); "
                              'it holds {"token": "…"} or {"username": "…", "password": "…"}') from None
        token, user, password = found.get("token", ""), found.get("username", user), found.get("password", "")
    if token:
        return ("bearer", token)
    if user or password:
        return ("basic", user, password)
    return ()


def client(service: str, settings: DicomWebSettings | None = None):
    """A ``dicomweb_client.DICOMwebClient`` for ``service`` with the run's credentials and retry policy
    (one per process and service)."""
    s = settings or DicomWebSettings()
    return _cached_client(service, _auth(s), s.timeout_s, s.attempts, s.backoff_ms)


def _status(exc: Exception) -> int | None:
    """The HTTP status behind a failed request: of the error's response, or of the last attempt's response
    when the client gave up retrying (``retrying.RetryError``)."""
    response = getattr(exc, "response", None)
    if response is None:
        last = getattr(exc, "last_attempt", None)
        value = getattr(last, "value", None)
        response = value if hasattr(value, "status_code") else None
        if response is None and isinstance(value, tuple) and len(value) > 1 and isinstance(value[1], BaseException):
            return _status(value[1])  # an exception on the last attempt
    return getattr(response, "status_code", None)


def _refusal(exc: Exception, service: str, what: str) -> Exception:
    """A clear error for an HTTP failure of the service itself (not of one instance)."""
    import requests

    status = _status(exc)
    if status in (401, 403):
        return SourceRefused(f"the DICOMweb service at {service} refused {what} (HTTP {status}): check "
                             "RADFLOW_DICOMWEB__TOKEN, or RADFLOW_DICOMWEB__USERNAME and RADFLOW_DICOMWEB__PASSWORD "
                             "(or RADFLOW_DICOMWEB__CREDENTIALS_FILE)")
    if status == 404:
        return SourceRefused(f"no DICOMweb service at {service} (HTTP 404 for {what}); the URL is the service "
                             "root, e.g. dicomweb+https://host/dicom-web")
    if isinstance(exc, requests.ConnectionError):
        return ConnectionError(f"cannot reach the DICOMweb service at {service} ({what}): connection failed")
    return ConnectionError(f"the DICOMweb service at {service} failed {what}"
                           + (f" (HTTP {status})" if status else f" ({type(exc).__name__})"))


def _filters(query: dict[str, str] | None) -> Iterator[dict[str, str]]:
    """One QIDO filter per combination of the values of ``query`` (``Modality=CR,DX`` asks for CR, then DX)."""
    items = [(k, [v.strip() for v in str(vals).split(",") if v.strip()]) for k, vals in (query or {}).items()]
    for combo in itertools.product(*[vals for _, vals in items]):
        yield {k: v for (k, _), v in zip(items, combo)}


def search(service: str, query: dict[str, str] | None = None, settings: DicomWebSettings | None = None,
           fields: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Every instance that matches ``query`` (QIDO-RS, ``settings.page_size`` per request), each once,
    as DICOM JSON. A refusal of the service (401/403/404) raises :class:`SourceRefused` at once."""
    s = settings or DicomWebSettings()
    c = client(service, s)
    seen: set[str] = set()
    for filters in _filters(query):
        offset = 0
        while True:  # until an empty page: a server may cap a page below the limit asked for
            try:
                page = c.search_for_instances(search_filters=filters, limit=s.page_size, offset=offset,
                                              fields=list(dict.fromkeys(_FIELDS + fields)))
            except Exception as exc:
                raise _refusal(exc, service, "the instance query (QIDO-RS)") from None
            if not page:
                break
            offset += len(page)
            for item in page:
                sop = first_value(item, "00080018")
                if sop and sop not in seen:
                    seen.add(sop)
                    yield item
        log.info("QIDO-RS %s: %d instances so far", filters or "all", len(seen))


def first_value(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def uids_of(item: dict[str, Any]) -> tuple[str, str, str]:
    """``(study, series, sop)`` Instance UIDs of a QIDO-RS result."""
    study, series, sop = (first_value(item, t) for t in _FIELDS)
    return study, series, sop


def discover(url: str, query: dict[str, str] | None, secret: bytes, settings: DicomWebSettings | None = None):
    """The inputs of a DICOMweb source (see :class:`radflow.ingest.sources.InputRef`), sorted by URI, each
    labelled with its SOP Instance UID keyed by ``secret`` (QIDO-RS reports no file size or version: 0, "")."""
    from radflow.dicom.pseudonym import remap_uid
    from radflow.ingest.sources import InputRef

    service = service_url(url)
    refs = []
    for item in search(service, query, settings):
        study, series, sop = uids_of(item)
        refs.append(InputRef(instance_uri(service, study, series, sop), 0, "",
                             source=source_of(service, remap_uid(secret, sop))))
    refs.sort()
    log.info("discovered %d instances at %s", len(refs), service)
    return refs


@contextlib.contextmanager
def _slot(slots: Any):
    if slots is None:
        yield
        return
    slots.acquire()
    try:
        yield
    finally:
        slots.release()


def _failed(exc: Exception, what: str) -> Exception:
    """An instance's request that failed after every retry: ``IO_ERROR`` for the instance (404, 500 …),
    or :class:`SourceUnavailable` when the service itself is gone (no connection, overloaded past every
    retry, credentials refused): the batch fails and a later run resumes it."""
    import requests

    status = _status(exc)
    if status in (401, 403, *_RETRIED) or (status is None and isinstance(exc, requests.RequestException)):
        return SourceUnavailable(f"the DICOMweb service stopped answering {what} requests"
                                 + (f" (HTTP {status})" if status else f" ({type(exc).__name__})")
                                 + "; run the same command again to resume")
    return InputRejected(Reason.IO_ERROR, f"{what} failed" + (f" (HTTP {status})" if status else f" ({type(exc).__name__})"))


def retrieve(uri: str, storage_options: dict[str, Any] | None = None, max_bytes: int | None = None) -> bytes:
    """One instance's bytes as the archive holds them (WADO-RS, ``transfer-syntax=*``); a retrieve that
    keeps failing is an ``IO_ERROR`` rejection naming the HTTP status."""
    settings, slots = options(storage_options)
    service, study, series, sop = parse_instance_uri(uri)
    c = client(service, settings)
    url = f"{service}/studies/{study}/series/{series}/instances/{sop}"
    # the client's own request and multipart decoding (its retries, session, parsing): its public
    # ``retrieve_instance`` hands back a parsed pydicom Dataset, and a Dataset written out again is not the
    # archive's file byte for byte; the part's bytes are what the ledger's sha256 and the frames come from
    try:
        with _slot(slots):
            response = c._http_get(url, headers={"Accept": _ACCEPT})  # retried by the client on 429/503/…
            if response.headers.get("Content-Type", "").startswith("application/dicom"):
                parts = [response.content]  # a single part sent without the multipart envelope
            else:
                parts = list(c._decode_multipart_message(response, stream=False))
    except Exception as exc:
        raise _failed(exc, "WADO-RS retrieve") from None
    if len(parts) != 1:
        raise InputRejected(Reason.IO_ERROR, f"WADO-RS retrieve returned {len(parts)} parts for one instance")
    data = bytes(parts[0])
    if max_bytes is not None and len(data) > max_bytes:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"instance of {len(data)} bytes exceeds limit {max_bytes}")
    return data


def metadata(uri: str, storage_options: dict[str, Any] | None = None):
    """One instance's header as a pydicom ``Dataset`` (WADO-RS metadata: no pixel data is transferred).
    The archive's transfer syntax is not part of the metadata: the dataset's file meta names it when the
    server sends (0002,0010), else Explicit VR Little Endian (the batch reads the real one from the bytes)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    settings, slots = options(storage_options)
    service, study, series, sop = parse_instance_uri(uri)
    try:
        with _slot(slots):
            found = client(service, settings).retrieve_instance_metadata(study, series, sop)
    except Exception as exc:
        raise _failed(exc, "WADO-RS metadata") from None
    syntax = first_value(found, "00020010") or pydicom.uid.ExplicitVRLittleEndian
    body = {k: v for k, v in found.items() if not k.startswith("0002")}
    ds = pydicom.Dataset.from_json(body, bulk_data_uri_handler=lambda *_: b"")
    if "Rows" in ds and not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        ds.PixelData = b""  # servers leave encapsulated pixel data out of the metadata; an image module says it is there
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


class ReadAhead:
    """Requests of one worker task made ahead of their use: ``take(uri)`` returns ``fetch(uri)`` (or raises
    what it raised), with up to ``width`` fetched or in flight from this task at once, in the order of
    ``uris``. Each request still takes one of the run's slots, so the run-wide limit holds; the task's
    decoding overlaps the next requests' latency instead of waiting for each in turn."""

    def __init__(self, uris: list[str], fetch, width: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._uris, self._fetch, self._width = list(uris), fetch, max(1, width)
        self._next = 0
        self._futures: dict[str, Any] = {}
        self._pool = ThreadPoolExecutor(self._width, thread_name_prefix="radflow-dicomweb")

    @classmethod
    def of(cls, uris: list[str], fetch, storage_options: dict[str, Any] | None) -> "ReadAhead":
        """A read-ahead over the DICOMweb addresses among ``uris`` (other addresses are fetched when taken;
        with none among them no thread starts)."""
        mine = [u for u in uris if is_dicomweb(u)]
        settings, slots = options(storage_options)
        if mine and slots is not None:
            # a Dask semaphore finds its scheduler through the worker of the thread that first uses it: bind it
            # here, in the task's thread, before the read-ahead threads acquire from it
            _ = slots.loop
        return cls(mine, fetch, settings.max_concurrency)

    def take(self, uri: str) -> Any:
        while self._next < len(self._uris) and len(self._futures) < self._width:
            u = self._uris[self._next]
            self._next += 1
            self._futures.setdefault(u, self._pool.submit(self._fetch, u))
        fut = self._futures.pop(uri, None)
        return self._fetch(uri) if fut is None else fut.result()

    def close(self) -> None:
        for fut in self._futures.values():
            fut.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check(url: str, settings: DicomWebSettings | None = None) -> None:
    """Fail fast: the URL (no credentials in it), and one QIDO-RS request of one instance, so a wrong
    password or a wrong service path is reported before anything starts."""
    service = service_url(url)
    s = settings or DicomWebSettings()
    quick = s.model_copy(update={"attempts": min(2, s.attempts)})  # an unreachable archive is reported in seconds
    try:
        client(service, quick).search_for_instances(limit=1, fields=["00080018"])
    except Exception as exc:
        raise _refusal(exc, service, "the instance query (QIDO-RS)") from None
