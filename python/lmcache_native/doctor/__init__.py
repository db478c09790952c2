"""``lmcache-native doctor``: checks a machine before vLLM runs lmcache-native on it.

Each check gives one line: ``OK``, ``WARN`` or ``FAIL``, what was found and, unless ``OK``, the
fix in words. The exit status is 1 when any check fails and 0 otherwise (warnings included).
``--json`` prints the same checks as one JSON document.

The checks, in order:

- software: Python, torch and vLLM versions (vLLM is optional: it is needed only to run as a
  connector);
- the native extension: version, whether it holds CUDA kernels and for which architectures;
- the GPU (through ``torch.cuda``) and whether ``paged_kv_gather`` launches on it and matches
  the CPU twin byte for byte;
- the CPU's ISA (AVX2, AVX-512, AMX) and what the native copy and MD5 kernels use, and for vLLM's
  CPU backend the KV layout the connector sees for bf16, fp16 and fp32 caches;
- the configuration that would be used (file, ``LMCACHE_*`` environment, secrets masked) and
  every problem in it;
- every configured tier (CPU memory, disk directory, remote store) reachable and writable;
- the admin API port free to bind.

Secrets (``internal_api_server_api_key``, a password in ``remote_url``) never appear in the
output: values are shown through the configuration's own masking, and every line is scrubbed of
the raw secret values as a second guard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"
STATUSES: tuple[str, ...] = (OK, WARN, FAIL)
MIN_SCRUB_LEN = 4


@dataclass
class Check:
    """The outcome of one check.

    Attributes:
        name: short identifier, e.g. ``python``, ``tier.local_disk``, ``admin_port``.
        status: ``OK``, ``WARN`` or ``FAIL``.
        detail: what was found, one line.
        fix: what to do about it (empty when ``OK``).
    """

    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        """Refuses a status outside ``STATUSES``."""
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclass
class Report:
    """Every check of one run, plus the configuration shown (secrets masked).

    Attributes:
        checks: in the order they ran.
        config: the effective configuration, as ``LMCacheEngineConfig.to_dict()`` shows it.
        secrets: raw secret values scrubbed from every output (never serialised).
    """

    checks: list[Check] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)

    def add(self, checks: Check | Iterable[Check]) -> None:
        """Appends one check or several."""
        if isinstance(checks, Check):
            self.checks.append(checks)
        else:
            self.checks.extend(checks)

    @property
    def exit_code(self) -> int:
        """1 when any check failed, else 0."""
        return 1 if any(c.status == FAIL for c in self.checks) else 0

    def counts(self) -> dict[str, int]:
        """How many checks ended in each status."""
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def scrub(self, text: str) -> str:
        """``text`` with every raw secret of 4 or more characters replaced by ``***``.

        A second guard only: values are already shown through the configuration's masking.
        Shorter secrets are left alone, since replacing them would garble unrelated words.
        """
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= MIN_SCRUB_LEN:
                text = text.replace(secret, "***")
        return text


def run_checks(
    config_path: str | None = None, port: int | None = None, block_size: int = 128
) -> Report:
    """Runs every check.

    Args:
        config_path: the config file (``--config``); ``None`` reads ``LMCACHE_CONFIG_FILE``.
        port: the admin API port to check (``--port``); ``None`` uses
            ``internal_api_server_port_start + 1``, worker 0's port.
        block_size: vLLM's cache block size, for the CPU KV layout lines (vLLM's CPU default).

    Returns:
        The report; its ``exit_code`` is the command's.
    """
    from lmcache_native.doctor import configuration, system, tiers

    report = Report()
    report.add(system.check_python())
    report.add(system.check_torch())
    report.add(system.check_vllm())
    report.add(system.check_extension())
    report.add(system.check_gpu())
    flags = system.cpu_flags()
    report.add(system.check_cpu_isa(flags))
    report.add(system.check_cpu_layouts(block_size, flags))
    loaded = configuration.load(config_path)
    report.secrets.extend(loaded.secrets)
    report.config = loaded.config.to_dict()
    report.add(loaded.checks)
    report.add(tiers.check_tiers(loaded.config))
    report.add(tiers.check_admin_port(loaded.config, port))
    return report


def render_text(report: Report) -> str:
    """The report as aligned plain text, one line per check and an indented fix line."""
    width = max((len(c.name) for c in report.checks), default=0)
    lines = ["lmcache-native doctor"]
    for c in report.checks:
        lines.append(f"  {c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
    n = report.counts()
    verdict = "FAIL" if report.exit_code else "OK"
    lines.append(f"{verdict}: {n[OK]} OK, {n[WARN]} WARN, {n[FAIL]} FAIL")
    return report.scrub("\n".join(lines))


def render_json(report: Report) -> str:
    """The report as a JSON document: ``{"status", "exit_code", "counts", "checks", "config"}``."""
    doc = {
        "status": FAIL if report.exit_code else OK,
        "exit_code": report.exit_code,
        "counts": report.counts(),
        "checks": [asdict(c) for c in report.checks],
        "config": report.config,
    }
    return report.scrub(json.dumps(doc, indent=2, default=str))


def main(
    config_path: str | None = None,
    port: int | None = None,
    as_json: bool = False,
    block_size: int = 128,
) -> int:
    """Runs the checks, prints the report to stdout and returns the exit status."""
    from lmcache_native.doctor.system import quiet_stdout

    # NOTE: libraries imported by the checks (vLLM) may print to stdout; keep it for the report.
    with quiet_stdout():
        report = run_checks(config_path, port, block_size)
    print(render_json(report) if as_json else render_text(report), flush=True)
    return report.exit_code


__all__: Sequence[str] = [
    "FAIL",
    "OK",
    "WARN",
    "Check",
    "Report",
    "main",
    "render_json",
    "render_text",
    "run_checks",
]
