"""The QC report: a self-contained HTML page rendered from a store."""

from radflow.report.qc import qc_report

__all__ = ["qc_report"]
