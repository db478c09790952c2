"""Helpers for the benchmark scripts that live only here (``bench_vllm_ttft.py``).

They are the package's own (``lmcache_native.bench``), re-exported under the names the scripts
import (``from common import ...``, the scripts' folder being on ``sys.path``).
"""

from __future__ import annotations

from lmcache_native.bench._util import machine_info, write_json
from lmcache_native.bench.report import print_table

__all__ = ["machine_info", "print_table", "write_json"]
