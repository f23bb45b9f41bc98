"""The public API's names survive the imports of the packages that share them."""

from __future__ import annotations

import subprocess
import sys


def test_radflow_ingest_stays_the_function_after_engine_imports():
    code = ("import radflow, radflow.ingest.batches, radflow.ingest.sources\n"
            "from radflow.ingest.duplicates import check_duplicates\n"
            "assert callable(radflow.ingest) and radflow.ingest.__name__ == 'ingest', radflow.ingest\n"
            "import sys; assert sys.modules['radflow.ingest'].__name__ == 'radflow.ingest'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
