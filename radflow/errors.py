"""radflow's exceptions and the closed set of ledger reason codes.

Every error inherits from :class:`RadflowError` *and* the built-in exception a
caller would naturally catch (``FileNotFoundError``, ``ValueError`` ...), the
pattern zarr-python uses. Messages say what went wrong, where, and how to fix
it, and never contain patient-identifying values.
"""

from __future__ import annotations

import enum

__all__ = [
    "Reason",
    "Anomaly",
    "anomaly",
    "RadflowError",
    "ConfigError",
    "StoreNotFoundError",
    "StoreFormatError",
    "MissingChunkError",
    "InputRejected",
    "NoDecoderError",
    "ModelError",
    "MissingDependencyError",
]


class Reason(str, enum.Enum):
    """Closed set of reason codes for every ledger row whose status is not ``ok``."""

    NOT_DICOM = "NOT_DICOM"
    TRUNCATED = "TRUNCATED"
    INVALID_VALUE = "INVALID_VALUE"
    SYNTAX_MISMATCH = "SYNTAX_MISMATCH"
    NON_IMAGE = "NON_IMAGE"
    NO_DECODER = "NO_DECODER"
    DECODE_ERROR = "DECODE_ERROR"
    PIXEL_LENGTH_MISMATCH = "PIXEL_LENGTH_MISMATCH"
    DIMENSION_LIMIT = "DIMENSION_LIMIT"
    DUPLICATE_IDENTICAL = "DUPLICATE_IDENTICAL"
    DUPLICATE_CONFLICT = "DUPLICATE_CONFLICT"
    ARCHIVE_UNSAFE_MEMBER = "ARCHIVE_UNSAFE_MEMBER"
    IO_ERROR = "IO_ERROR"
    WORKER_LOST = "WORKER_LOST"
    TIMEOUT = "TIMEOUT"
    LINK_SKIPPED = "LINK_SKIPPED"  # a symbolic link not followed (setting off, target outside the source, loop)
    NOT_REGULAR_FILE = "NOT_REGULAR_FILE"  # a FIFO, socket or device: never opened
    MEMORY_LIMIT = "MEMORY_LIMIT"  # decoding would need more memory than a worker has

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


class Anomaly(str, enum.Enum):
    """Closed set of findings recorded on inputs that are *kept* (ledger and instance rows).

    An anomaly names what was wrong and where (element keyword, tag and VR), never a value.
    """

    INVALID_VALUE = "INVALID_VALUE"  # a value breaks its VR's rules; read as pydicom's lenient mode reads it
    NO_FILE_META = "NO_FILE_META"  # no preamble or file meta; parsed as a bare dataset, transfer syntax inferred
    SYNTAX_MISMATCH_REPAIRED = "SYNTAX_MISMATCH_REPAIRED"  # encoding contradicts the transfer syntax; read as encoded
    LUT_DESCRIPTOR_EMPTY = "LUT_DESCRIPTOR_EMPTY"  # a Modality/VOI LUT item without a usable descriptor: LUT ignored
    DECODER_FALLBACK = "DECODER_FALLBACK"  # every pydicom plugin failed; a fallback decoder produced the frames

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


def anomaly(code: Anomaly, where: str = "") -> str:
    """One anomaly as recorded in the tables: ``"CODE"`` or ``"CODE where"``."""
    return f"{Anomaly(code).value} {where}".strip()


class RadflowError(Exception):
    """Base class of every error radflow raises on purpose."""


class ConfigError(RadflowError, ValueError):
    """A setting or option has an unusable value."""


class StoreNotFoundError(RadflowError, FileNotFoundError):
    """No radflow store exists at the given URL."""


class SourceUnavailable(RadflowError, ConnectionError):
    """The source itself stopped answering (a DICOMweb service unreachable, overloaded past every retry,
    or refusing the run's credentials): not a property of one input, so no ledger row is written; the
    batch fails and the run ends, and running it again resumes where it stopped."""


class StoreBusy(RadflowError):
    """Another radflow run holds the store's writer lock."""


class StoreFormatError(RadflowError, ValueError):
    """The store exists but its layout or format version is not one this radflow reads."""


class MissingChunkError(RadflowError, LookupError):
    """A chunk that the tables say was written is absent from the store (never read as zeros)."""


class MissingDependencyError(RadflowError, ImportError):
    """An optional package needed by the requested feature is not installed."""


class ModelError(RadflowError, ValueError):
    """A model file, architecture or model card cannot be used."""


class InputRejected(RadflowError):
    """One input cannot be stored; carries the ledger reason code.

    Parameters
    ----------
    reason : Reason
        The closed reason code written to the ledger.
    detail : str
        A message for the operator. Must not contain identifying values.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = Reason(reason)
        self.detail = detail


class NoDecoderError(InputRejected, ImportError):
    """The input's transfer syntax has no pixel decoder installed."""

    def __init__(self, detail: str) -> None:
        InputRejected.__init__(self, Reason.NO_DECODER, detail)
