"""DICOM bytes → headers and frames: lenient reading with recorded anomalies, pixel decoding with
fallbacks, de-identification (PS3.15 Annex E) and keyed pseudonyms."""
