"""Results as DICOM: a model's predictions for one source image as a Structured Report a PACS shows.

One Comprehensive SR per (source instance, model), its content a TID 1500 Measurement Report (built with
``highdicom``): one measurement group per predicted frame, each output ``p_<label>`` a measurement
(unit ``1``, no units) referencing the source image (and frame), with the algorithm's name, version and
weights sha256 in its Algorithm Identification (TID 4019). The report joins the source's own study
(patient and study modules copied from the source header), in a series of its own per model.

UIDs are pure functions of the source instance and the model's weights, so exporting twice sends the same
objects again (an archive keeps one) instead of doubling them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import pydicom

__all__ = ["Prediction", "prediction_report", "stable_uid"]

#: LOINC 18748-4 "Diagnostic imaging study" (the procedure the report is about)
_PROCEDURE = ("18748-4", "LN", "Diagnostic imaging study")
_SCHEME = "99RADFLOW"  # private coding scheme of the model outputs (their labels are the model card's)


@dataclass(frozen=True)
class Prediction:
    """One frame's outputs: ``{label: value}`` for the model named ``model`` (weights ``sha256``)."""

    frame: int
    values: dict[str, float]
    model: str
    version: str
    sha256: str


def stable_uid(*parts: str) -> str:
    """A ``2.25.`` UID derived from ``parts`` (the same parts give the same UID on every run)."""
    digest = hashlib.sha256("\0".join(("radflow-export", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def prediction_report(source: pydicom.Dataset, predictions: Sequence[Prediction], *,
                      series_number: int = 9901) -> pydicom.Dataset:
    """The SR dataset for ``predictions`` (all of one model) of the image whose header is ``source``
    (its original UIDs and patient/study modules; pixel data is not needed)."""
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    first = predictions[0]
    algorithm = hd.sr.AlgorithmIdentification(name=first.model, version=first.version or first.sha256[:12],
                                              parameters=[f"weights sha256 {first.sha256}"], manufacturer="radflow")
    multi = int(source.get("NumberOfFrames", 1) or 1) > 1
    groups = []
    for p in predictions:
        try:
            image = hd.sr.SourceImageForMeasurementGroup.from_source_image(
                source, referenced_frame_numbers=[p.frame + 1] if multi else None)
        except TypeError:  # frames in a single-frame SOP class (Secondary Capture): the image as a whole
            image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
        measurements = [hd.sr.Measurement(name=CodedConcept(f"p_{label}", _SCHEME, f"model output {label}"),
                                          value=float(value), unit=CodedConcept("1", "UCUM", "no units"),
                                          algorithm_id=algorithm)
                        for label, value in p.values.items()]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=stable_uid(source.SOPInstanceUID, first.sha256, str(p.frame)),
                identifier=f"{first.model} frame {p.frame + 1}"),
            algorithm_id=algorithm, measurements=measurements, source_images=[image]))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=stable_uid("device", first.sha256), name=first.model[:64], manufacturer_name="radflow"))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CodedConcept(*_PROCEDURE), imaging_measurements=groups)
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=content,
        series_instance_uid=stable_uid("series", source.StudyInstanceUID, first.sha256),
        series_number=series_number, sop_instance_uid=stable_uid("sr", source.SOPInstanceUID, first.sha256),
        instance_number=1, manufacturer="radflow", series_description=f"radflow {first.model}"[:64])


def report_summary(sr: pydicom.Dataset) -> dict[str, Any]:
    """The referenced image and the measurements of an SR made by :func:`prediction_report` (for checks)."""
    out: dict[str, Any] = {"referenced": [], "values": {}}
    for item in sr.ContentSequence:
        for group in getattr(item, "ContentSequence", []):
            for entry in getattr(group, "ContentSequence", []):
                if "ReferencedSOPSequence" in entry:
                    out["referenced"].append(str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
                if "MeasuredValueSequence" in entry:
                    name = entry.ConceptNameCodeSequence[0].CodeValue
                    out["values"][name] = float(entry.MeasuredValueSequence[0].NumericValue)
    return out
