"""Synthetic test data made in code: DICOM radiograph archives (more kinds to come)."""

from radflow.synth.radiographs import SynthSummary, chest_radiograph, write_archive

__all__ = ["SynthSummary", "chest_radiograph", "write_archive"]
