"""The ingest engine: discover inputs (folders, S3, archives), index headers, plan shard-owning
batches, one writer per input kind (DICOM, fastMRI HDF5 k-space, sinograms), duplicates, and
resume from the journal. Everything here runs on workers or in the planning process; the
orchestration is in :mod:`radflow.flows.ingest`."""
