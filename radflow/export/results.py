"""``radflow export STORE --predictions --to TARGET``: each predicted image's results as a DICOM SR.

The store holds keyed pseudonyms, never an original UID, and no table links the two. Export re-identifies
by recomputation: it lists the source again (the store's own source, or ``source``), computes each
original SOP Instance UID's pseudonym with the store's key, and keeps the instances whose pseudonym has
predictions. Without the key nothing can be matched (a store written with another key is refused).
Each report joins the original study, references the original image, and goes to a folder or, with
STOW-RS, to a DICOMweb archive (``dicomweb+https://…``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from typing import Any, Iterator

import pydicom

from radflow.config import Settings, key_fingerprint, resolve_secret_key
from radflow.dicom.pseudonym import remap_uid
from radflow.dicom.sr import Prediction, prediction_report
from radflow.errors import ConfigError
from radflow.ingest import dicomweb
from radflow.store.handle import open_store

__all__ = ["export_predictions", "source_headers"]

log = logging.getLogger(__name__)


def source_headers(source: str, wanted: set[str], key: bytes, settings: Settings, *,
                   query: dict[str, str] | None = None,
                   storage_options: dict[str, Any] | None = None) -> Iterator[tuple[str, pydicom.Dataset]]:
    """``(pseudonym, original header)`` of each instance under ``source`` whose keyed SOP Instance UID is
    in ``wanted``. A DICOMweb source is listed with QIDO-RS and only the matches' metadata is fetched."""
    if dicomweb.is_dicomweb(source):
        service = dicomweb.service_url(source)
        opts = {"dicomweb": {"settings": settings.dicomweb}}
        found: dict[str, str] = {}  # instance address → pseudonym, for the instances with predictions
        for item in dicomweb.search(service, query, settings.dicomweb):
            study, series, sop = dicomweb.uids_of(item)
            pseudonym = remap_uid(key, sop)
            if pseudonym in wanted:
                found[dicomweb.instance_uri(service, study, series, sop)] = pseudonym
        uris = sorted(found)
        with dicomweb.ReadAhead(uris, functools.partial(dicomweb.metadata, storage_options=opts),
                                settings.dicomweb.max_concurrency) as ahead:  # the requests overlap
            for uri in uris:
                yield found[uri], ahead.take(uri)
        return
    from radflow.ingest.sources import discover, open_input

    seen: set[str] = set()  # an archive may hold copies of one instance (the store kept one): one report each
    for ref in discover(source, storage_options, settings.limits):
        if ref.unsafe:
            continue
        try:
            with open_input(ref.uri, storage_options, settings.limits.max_file_bytes) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)  # the header only, not the pixels
            sop = str(ds.SOPInstanceUID)
        except Exception:  # not DICOM, unreadable: not one of the stored images
            continue
        pseudonym = remap_uid(key, sop)
        if pseudonym in wanted and pseudonym not in seen:
            seen.add(pseudonym)
            yield pseudonym, ds


def _predictions(store) -> dict[str, dict[tuple[str, str], list[Prediction]]]:
    """``{pseudonymous SOP UID: {(model, sha256): [Prediction per frame]}}`` from the store's tables."""
    preds = store.predictions()
    if preds.empty:
        raise ConfigError(f"no predictions in {store.url}; run `radflow process {store.url} --steps preprocess,infer "
                          "--model …` first")
    frames = store.instances()[["index", "frame"]]
    preds = preds.merge(frames, on="index", how="left")
    outputs = [c for c in preds.columns if c.startswith("p_")]
    by_instance: dict[str, dict[tuple[str, str], list[Prediction]]] = defaultdict(lambda: defaultdict(list))
    for row in preds.itertuples(index=False):
        values = {c[2:]: getattr(row, c) for c in outputs if getattr(row, c) == getattr(row, c)}  # NaN: not this model's
        if not values:
            continue
        sha = str(row.model_sha256)
        by_instance[str(row.sop_uid)][(str(row.model), sha)].append(
            Prediction(frame=int(row.frame), values=values, model=str(row.model), version=sha[:12], sha256=sha))
    return by_instance


def export_predictions(store_url: str, to: str, *, source: str | None = None, query: dict[str, str] | None = None,
                       storage_options: dict[str, Any] | None = None, batch: int = 16) -> dict[str, Any]:
    """Write (folder) or send (``dicomweb+…``, STOW-RS) one SR per predicted instance and model.

    Returns counts: ``instances`` with predictions, ``matched`` in the source, ``reports`` written or sent,
    ``not_found`` (instances the source no longer lists), and ``to``."""
    settings = Settings()
    key = resolve_secret_key(settings)
    store = open_store(store_url, storage_options)
    if store.meta.get("key_fingerprint") != key_fingerprint(key):
        raise ConfigError("this store was written with another pseudonymization key: its UIDs cannot be "
                          "re-identified without that key (RADFLOW_SECRET_KEY or RADFLOW_KEY_FILE)")
    wanted = _predictions(store)
    source = source or store.meta.get("source") or ""
    if query and not dicomweb.is_dicomweb(source):
        raise ConfigError(f"--query selects instances of a DICOMweb source; the source here is {source!r}")
    send = _sender(to, settings)
    reports = matched = 0
    pending: list[pydicom.Dataset] = []
    for pseudonym, header in source_headers(source, set(wanted), key, settings, query=query,
                                            storage_options=storage_options):
        matched += 1
        for predictions in wanted[pseudonym].values():
            pending.append(prediction_report(header, sorted(predictions, key=lambda p: p.frame)))
        if len(pending) >= batch:
            reports += send(pending)
            pending = []
    if pending:
        reports += send(pending)
    out = {"instances": len(wanted), "matched": matched, "reports": reports, "not_found": len(wanted) - matched, "to": to}
    log.info("exported %d reports for %d of %d instances to %s", reports, matched, len(wanted), to)
    return out


def _sender(to: str, settings: Settings):
    if dicomweb.is_dicomweb(to):
        service = dicomweb.service_url(to)
        client = dicomweb.client(service, settings.dicomweb)

        def stow(datasets: list[pydicom.Dataset]) -> int:
            try:
                client.store_instances(datasets=datasets)
            except Exception as exc:
                raise dicomweb._refusal(exc, service, "the reports (STOW-RS)") from None
            return len(datasets)

        return stow
    os.makedirs(to, exist_ok=True)

    def write(datasets: list[pydicom.Dataset]) -> int:
        for ds in datasets:
            ds.save_as(os.path.join(to, f"{ds.SOPInstanceUID}.dcm"), enforce_file_format=True)
        return len(datasets)

    return write
