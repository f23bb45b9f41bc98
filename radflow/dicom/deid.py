"""De-identification of DICOM headers by the Basic Application Level Confidentiality Profile
(DICOM PS3.15 Annex E), applied before any header value is written.

The action table is data: ``data/confidentiality_profile_attributes.json`` is Table E.1-1 as
published in machine-readable form by the open ``dicom-standard`` project (Innolitics, MIT
licence; the edition on PyPI as ``dicom-standard==0.1.0``). Each row gives an attribute's
action under the Basic Profile (``basicProfile``) and under each option.

Actions, as they apply to the header record radflow writes (a JSON document per instance,
not a conformant DICOM object, so "unless required for IOD conformance" never holds):

* ``X`` remove; ``Z`` empty; ``D`` replace with a dummy value of the VR; ``U`` replace the
  UID with a keyed ``2.25.<integer>`` UID (consistent across runs and workers);
  ``K`` keep; ``C`` clean (dates and times shifted by the patient's constant offset).
* Combinations (``X/Z``, ``X/D``, ``X/Z/D``, ``Z/D``) take their first, most protective
  action; ``X/Z/U*`` keeps the sequence and de-identifies its items (their UIDs are ``U``).
* Options applied: *Retain Longitudinal Temporal Information with Modified Dates*
  (``dates="shift"``, the default: the option's ``C`` replaces the basic action) and
  *Retain Safe Private* (only the allowlisted private elements). Without date shifting,
  dates follow the Basic Profile.
* Private elements (odd groups), curves (50xx) and overlay data/comments (60xx) are removed;
  binary values (OB, OW, OF, OD, OL, OV, UN) are never written.
* Patient ID is replaced by the pseudonymous patient key (the same keyed hash as the
  ``patient_key`` column), so a header joins its ``instances`` rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from radflow.dicom.pseudonym import keyed_hash, remap_uid

__all__ = ["Rule", "annex_e_rules", "Deidentifier", "PROFILE_NAME", "TABLE_EDITION", "method_codes"]

PROFILE_NAME = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile"
TABLE_EDITION = "Table E.1-1 from dicom-standard 0.1.0 (Innolitics, MIT)"
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW", "US or SS or OW"}
_DUMMY = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "DS": "0", "IS": "0",
          "AS": "000D", "CS": "ANONYMIZED", "UI": ""}
_MAX_LEN = {"SH": 16, "AE": 16, "CS": 16, "LO": 64}
# (code value, meaning) of CID 7050 De-identification Method
_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "safe_private": ("113111", "Retain Safe Private Option"),
}


@dataclass(frozen=True)
class Shift:
    """A patient's date shift: dates move back by ``days``; times of day move back by ``seconds``
    (wrapping at midnight, the date part untouched). Date intervals stay exact; time-of-day
    differences stay exact unless the shift wraps one of them past midnight."""

    days: int
    seconds: int

    def __repr__(self) -> str:  # a shift reveals true dates: never logged
        return "Shift(<redacted>)"


@dataclass(frozen=True)
class Rule:
    """One attribute's row of Table E.1-1."""

    name: str
    basic: str
    modified_dates: str = ""  # the Retain Longitudinal ... Modified Dates option's action ("C" or "")


@functools.cache
def annex_e_rules() -> dict[int, Rule]:
    """Table E.1-1 keyed by tag (rows with a group or element mask are handled as patterns)."""
    text = resources.files("radflow.dicom").joinpath("data/confidentiality_profile_attributes.json").read_text()
    rules: dict[int, Rule] = {}
    for row in json.loads(text):
        hexdigits = row["tag"][1:5] + row["tag"][6:10]
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", hexdigits):
            continue  # (50XX,XXXX), (60XX,3000), (60XX,4000), private: see _pattern_action
        rules[int(hexdigits, 16)] = Rule(row["name"], row["basicProfile"], row.get("rtnLongModifDatesOpt", ""))
    return rules


def _pattern_action(tag: int) -> str | None:
    group, elem = tag >> 16, tag & 0xFFFF
    if group & 1:
        return "X"  # private attributes
    if group & 0xFF00 == 0x5000:
        return "X"  # curve data
    if group & 0xFF00 == 0x6000 and elem in (0x3000, 0x4000):
        return "X"  # overlay data, overlay comments
    return None


def method_codes(dates: str, private_allowlist: bool) -> list[tuple[str, str]]:
    """CID 7050 codes of the profile and options applied."""
    codes = [_CODES["basic"]]
    if dates == "shift":
        codes.append(_CODES["modified_dates"])
    if private_allowlist:
        codes.append(_CODES["safe_private"])
    return codes


def _parse_allowlist(entries: tuple[str, ...]) -> frozenset[tuple[int, int, str]]:
    """``"GGGG,xxEE,PRIVATE CREATOR"`` → ``(group, element low byte, creator)``."""
    out = set()
    for entry in entries:
        m = re.fullmatch(r"\s*([0-9A-Fa-f]{4}),\s*[xX]{2}([0-9A-Fa-f]{2})\s*,\s*(.+?)\s*", entry)
        if not m or not int(m.group(1), 16) & 1:
            raise ValueError(f"private allowlist entry {entry!r} is not 'GGGG,xxEE,CREATOR' with an odd group")
        out.add((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
    return frozenset(out)


@dataclass(frozen=True)
class Deidentifier:
    """Applies Table E.1-1 to a dataset with one installation key.

    Parameters
    ----------
    key : the pseudonymization key (UIDs, patient keys, date offsets derive from it)
    dates : ``"shift"`` (Retain Longitudinal Temporal Information with Modified Dates) or
        ``"remove"`` (the Basic Profile's own action)
    max_shift_days : dates move back by 1 … this many days, constant per patient
    private_allowlist : ``"GGGG,xxEE,CREATOR"`` private elements kept (Retain Safe Private)
    """

    key: bytes
    dates: str = "shift"
    max_shift_days: int = 3650
    private_allowlist: tuple[str, ...] = ()
    keep_identifiers: bool = False
    _allowed: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allowed", _parse_allowlist(tuple(self.private_allowlist)))

    def __repr__(self) -> str:  # the key never appears in logs
        return f"Deidentifier(dates={self.dates!r}, allowlist={len(self._allowed)})"

    # -- per-patient values --------------------------------------------------------------
    def offset(self, patient_id: str) -> Shift:
        """The patient's constant shift (keyed on the patient ID, so every run and worker agrees)."""
        digest = hmac.new(self.key, f"date-shift\0{patient_id}".encode(), hashlib.sha256).digest()
        days = 1 + int.from_bytes(digest[:4], "big") % max(1, self.max_shift_days)
        seconds = 1 + int.from_bytes(digest[4:8], "big") % 86399
        return Shift(days, seconds)

    def method(self) -> str:
        parts = [PROFILE_NAME]
        if self.dates == "shift":
            parts.append("Retain Longitudinal Temporal Information with Modified Dates")
        if self._allowed:
            parts.append("Retain Safe Private (allowlist)")
        return "radflow: " + "; ".join(parts)

    def evidence(self) -> dict[str, Any]:
        """What the store records about the de-identification applied."""
        return {
            "patient_identity_removed": "YES",
            "deidentification_method": self.method(),
            "method_codes": [{"scheme": "DCM", "value": v, "meaning": m} for v, m in method_codes(self.dates, bool(self._allowed))],
            "dates": self.dates,
            "private_allowlist": sorted(self.private_allowlist),
            "table": TABLE_EDITION,
            "attributes_in_table": len(annex_e_rules()),
        }

    # -- the dataset ---------------------------------------------------------------------
    def apply(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` without file meta, pixel data or other binary values
        (with ``keep_identifiers``, the unchanged copy)."""
        patient_id = str(ds.get("PatientID", "") or "")
        out = self._walk(ds, self.offset(patient_id))
        if self.keep_identifiers:
            return out
        out.PatientID = keyed_hash(self.key, patient_id, purpose="patient")
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = self.method()[:64]
        seq = Sequence()
        for value, meaning in method_codes(self.dates, bool(self._allowed)):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            seq.append(item)
        out.DeidentificationMethodCodeSequence = seq
        if self.dates == "shift":
            out.LongitudinalTemporalInformationModified = "MODIFIED"
        return out

    def to_json(self, ds: Dataset) -> str:
        """The de-identified dataset in the DICOM JSON model (PS3.18 F). An element pydicom cannot
        express in JSON (a malformed value read leniently) is left out rather than losing the image."""
        out = self.apply(ds)
        try:
            doc = out.to_json_dict(bulk_data_threshold=10**9, bulk_data_element_handler=None)
        except Exception:  # pydicom raises assorted types for odd values
            doc = {}
            for elem in out:
                try:
                    doc[f"{int(elem.tag):08X}"] = elem.to_json_dict(bulk_data_element_handler=None,
                                                                    bulk_data_threshold=10**9)
                except Exception:
                    continue
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def _private_allowed(self, ds: Dataset, tag: int) -> bool:
        if not self._allowed:
            return False
        group, elem = tag >> 16, tag & 0xFFFF
        if elem < 0x1000:
            return False  # private creator elements are re-added below for kept elements
        creator_tag = (group << 16) | (elem >> 8)
        creator = ds.get(creator_tag)
        return creator is not None and (group, elem & 0xFF, str(creator.value).strip()) in self._allowed

    def _walk(self, ds: Dataset, shift: Shift) -> Dataset:
        out = Dataset()
        for elem in ds:
            tag = int(elem.tag)
            if elem.VR in _BINARY_VRS or tag >> 16 == 0x0002 or tag == 0x7FE00010:
                continue
            if self.keep_identifiers:
                _add(out, elem.tag, elem.VR, Sequence([self._walk(i, shift) for i in elem.value])
                                            if elem.VR == "SQ" else elem.value)
                continue
            if tag >> 16 & 1:
                if self._private_allowed(ds, tag):
                    creator_tag = Tag((tag >> 16), (tag & 0xFFFF) >> 8)
                    _add(out, creator_tag, "LO", ds[creator_tag].value)
                    _add(out, elem.tag, elem.VR, elem.value)
                continue
            action = self._action(tag, elem.VR)
            if action == "K":
                if elem.VR == "SQ":
                    _add(out, elem.tag, "SQ", Sequence([self._walk(i, shift) for i in elem.value]))
                else:
                    _add(out, elem.tag, elem.VR, elem.value)
            elif action == "X":
                continue
            elif action == "Z":
                _add(out, elem.tag, elem.VR, Sequence() if elem.VR == "SQ" else None)
            elif action == "D":
                _add(out, elem.tag, elem.VR, self._dummy(elem))
            elif action == "U":
                if elem.VR == "SQ":  # X/Z/U*: keep the references, remap their UIDs
                    _add(out, elem.tag, "SQ", Sequence([self._walk(i, shift) for i in elem.value]))
                else:
                    _add(out, elem.tag, elem.VR, self._remap(elem.value))
            elif action == "C":
                value = _shift_element(elem, shift)
                if value is not None:
                    _add(out, elem.tag, elem.VR, value)
        return out

    def _action(self, tag: int, vr: str) -> str:
        rule = annex_e_rules().get(tag)
        if rule is None:
            action = _pattern_action(tag) or "K"
            if action == "K" and vr in _SHIFTERS:  # dates the table does not list would reveal the shift
                return "C" if self.dates == "shift" else "X"
            return action
        if self.dates == "shift" and rule.modified_dates == "C":
            return "C"
        code = rule.basic
        if "U" in code:
            return "U"
        return code.split("/")[0]

    def _remap(self, value: Any) -> Any:
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            return [remap_uid(self.key, str(v)) for v in value]
        return remap_uid(self.key, str(value)) if value else value

    @staticmethod
    def _dummy(elem: pydicom.DataElement) -> Any:
        if elem.VR == "SQ":
            return Sequence()
        if elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
            return 0
        value = _DUMMY.get(elem.VR, "ANONYMIZED")
        return value[: _MAX_LEN.get(elem.VR, 64)]


def _add(ds: Dataset, tag: Any, vr: str, value: Any) -> None:
    """Add an element; a value pydicom cannot hold under its VR (read leniently) is left out."""
    try:
        ds.add(_elem(tag, vr, value))
    except (ValueError, TypeError, OverflowError):
        pass


def _elem(tag: Any, vr: str, value: Any) -> pydicom.DataElement:
    """An element built without re-validating its value: values come from a dataset already read
    under the run's validation policy (and pydicom's validation mode is process-wide state)."""
    return pydicom.DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)


# -- dates and times ---------------------------------------------------------------------
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


def _parse_da(v: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(v.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _parse_tm(v: str) -> tuple[dt.timedelta, int] | None:
    """Time of day as a timedelta and how many components it had (precision kept on output)."""
    m = _TM.match(v.strip().replace(":", ""))
    if not m:
        return None
    h, mi, s, frac = m.group(1), m.group(2) or "00", m.group(3) or "00", m.group(4) or ""
    parts = 1 + bool(m.group(2)) + bool(m.group(3))
    td = dt.timedelta(hours=int(h), minutes=int(mi), seconds=int(s), microseconds=int(round(float(frac or "0") * 1e6)))
    return (td, parts + (len(frac) - 1 if frac else 0) * 10) if td < dt.timedelta(days=1) else None


def _format_tm(td: dt.timedelta, parts: int) -> str:
    total = td.total_seconds() % 86400
    h, rem = divmod(int(total), 3600)
    mi, s = divmod(rem, 60)
    us = int(round((total - int(total)) * 1e6))
    out = f"{h:02d}" + (f"{mi:02d}" if parts % 10 >= 2 else "") + (f"{s:02d}" if parts % 10 >= 3 else "")
    frac_digits = parts // 10
    if frac_digits:
        out += "." + f"{us:06d}"[:frac_digits]
    return out


def _shift_da(v: str, shift: "Shift") -> str | None:
    d = _parse_da(v)
    return None if d is None else (d - dt.timedelta(days=shift.days)).strftime("%Y%m%d")


def _shift_tm(v: str, shift: "Shift") -> str | None:
    tm = _parse_tm(v)
    return None if tm is None else _format_tm(tm[0] - dt.timedelta(seconds=shift.seconds), tm[1])


def _shift_dt(v: str, shift: "Shift") -> str | None:
    m = re.match(r"^(\d{8})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?$", v.strip())
    if not m:
        return None
    day = _shift_da(m.group(1), shift)
    tm = _shift_tm(m.group(2), shift) if m.group(2) else ""
    return None if day is None or tm is None else day + tm + (m.group(3) or "")


_SHIFTERS = {"DA": _shift_da, "TM": _shift_tm, "DT": _shift_dt}


def _shift_element(elem: pydicom.DataElement, shift: "Shift") -> Any:
    """Shift a DA/TM/DT value (or each of its values); ``None`` removes what cannot be parsed
    (and any other VR the option cleans, which radflow does not rewrite)."""
    shifter = _SHIFTERS.get(elem.VR)
    if shifter is None:
        return None
    values = list(elem.value) if isinstance(elem.value, (list, tuple, pydicom.multival.MultiValue)) else [elem.value]
    out = []
    for v in values:
        v = "" if v is None else str(v)
        new = shifter(v, shift) if v else v
        if new is None:
            return None
        out.append(new)
    return out if len(out) > 1 else out[0]


def deidentifier(privacy, key: bytes) -> Deidentifier:
    """The :class:`Deidentifier` for :class:`~radflow.config.PrivacySettings` ``privacy``."""
    return Deidentifier(key, dates=privacy.dates, max_shift_days=privacy.max_date_shift_days,
                        private_allowlist=tuple(privacy.private_allowlist),
                        keep_identifiers=privacy.mode == "keep-identifiers")


def privacy_record(privacy, key: bytes) -> dict[str, Any]:
    """The store's ``privacy`` attribute: the mode, the source-path policy and the evidence of
    de-identification (Patient Identity Removed, De-identification Method, options)."""
    record: dict[str, Any] = {
        "mode": privacy.mode,
        "dates": privacy.dates,
        "source_paths": "hashed" if privacy.hash_sources else "kept",
        "masks": {k: [list(r) for r in v] for k, v in privacy.masks.items()},
    }
    if privacy.mode == "deidentify":
        record.update(deidentifier(privacy, key).evidence())
    else:
        record.update(patient_identity_removed="NO", deidentification_method="none: identifiers kept by explicit option "
                      "(RADFLOW_PRIVACY__MODE=keep-identifiers)")
    return record
