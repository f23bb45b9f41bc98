"""Results out of a store, back to where the images came from: predictions as DICOM Structured Reports,
written to a folder or sent to a DICOMweb archive (STOW-RS) — see :mod:`radflow.export.results`."""
