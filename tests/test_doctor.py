"""``lmcache-native doctor``.

One test per FAIL it reports, a healthy run against a real Redis, ``--json`` against the text run,
and secrets kept out of both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
import yaml
from lmcache_native import doctor
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.doctor import FAIL, OK, WARN, configuration, system, tiers
from lmcache_native.ops import copy_isa, copy_set_isa

from tests.redis_servers import RedisClusterServers, require_binaries

SCRIPT = Path(sys.executable).with_name("lmcache-native")
PASSWORD = "doctor-pw-6f1c2a"
API_KEY = "sk-doctor-secret-93b7"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(path: Path, values: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"{SCRIPT} missing: reinstall the package (pip install -e .)"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(SCRIPT), "doctor", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def _text_statuses(stdout: str) -> list[tuple[str, str]]:
    """(status, name) of each check line of the text report."""
    out = []
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and line.startswith("  ") and words[0] in (OK, WARN, FAIL):
            out.append((words[0], words[1]))
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LMCACHE_* variables from the test runner's environment."""
    for k in list(os.environ):
        if k.startswith("LMCACHE_"):
            monkeypatch.delenv(k)


@pytest.fixture
def redis_user(redis_url: str) -> Iterator[str]:
    """A Redis URL with a user and password (an ACL user on the real redis-server)."""
    client = redis.Redis.from_url(redis_url)
    client.acl_setuser(
        "doctor", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
    )
    try:
        yield redis_url.replace("redis://", f"redis://doctor:{PASSWORD}@")
    finally:
        client.acl_deluser("doctor")
        client.close()


# -- end to end: the command as an operator runs it ----------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_healthy_run_real_redis_exit_0_json_matches_text_secrets_hidden(
    tmp_path: Path, redis_user: str, redis_url: str
) -> None:
    port = _free_port()
    cfg = _write_config(
        tmp_path / "lmcache.yaml",
        {
            "chunk_size": 256,
            "max_local_cpu_size": 0.1,
            "local_disk": f"file://{tmp_path / 'kv'}",
            "max_local_disk_size": 0.01,
            "remote_url": redis_user,
            "internal_api_server_enabled": True,
            "internal_api_server_port_start": port - 1,
            "internal_api_server_api_key": API_KEY,
        },
    )
    text = _run(env={"LMCACHE_CONFIG_FILE": str(cfg)})
    assert text.returncode == 0, text.stdout + text.stderr
    statuses = _text_statuses(text.stdout)
    by_name = {name: status for status, name in statuses}
    for tier in ("tier.local_cpu", "tier.local_disk", "tier.remote"):
        assert by_name[tier] == OK, text.stdout
    assert by_name["admin_port"] == OK
    assert by_name["config.file"] == OK
    assert FAIL not in by_name.values()
    assert f"127.0.0.1:{port} free" in text.stdout
    # the probe chunk was deleted again; the disk directory was not created by the check
    client = redis.Redis.from_url(redis_url)
    assert client.keys(f"{tiers.PROBE_KEY_PREFIX}*") == []
    client.close()
    assert not (tmp_path / "kv").exists()

    as_json = _run("--json", env={"LMCACHE_CONFIG_FILE": str(cfg)})
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["exit_code"] == 0
    assert doc["status"] == OK
    assert [(c["status"], c["name"]) for c in doc["checks"]] == statuses
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in doc["checks"])
    assert doc["config"]["remote_url"] == redis_user.replace(PASSWORD, "***")
    assert doc["config"]["internal_api_server_api_key"] == "***"
    for out in (text.stdout, text.stderr, as_json.stdout, as_json.stderr):
        assert PASSWORD not in out
        assert API_KEY not in out


@pytest.mark.slow
def test_bad_config_exits_1_and_lists_every_problem(tmp_path: Path) -> None:
    cfg = _write_config(
        tmp_path / "bad.yaml",
        {"chunk_size": 0, "cache_policy": "MRU", "chunk_szie": 5, "max_local_cpu_size": 0.1},
    )
    port = str(_free_port())
    run = _run("--config", str(cfg), "--port", port, env={"LMCACHE_BLOCKING_TIMEOUT_SECS": "x"})
    assert run.returncode == 1, run.stdout
    fails = [line for line in run.stdout.splitlines() if line.startswith("  FAIL")]
    assert len(fails) == 3, run.stdout
    assert any("'chunk_size'" in f and "must be >= 1" in f for f in fails)
    assert any("'cache_policy'" in f and "MRU" in f for f in fails)
    assert any("LMCACHE_BLOCKING_TIMEOUT_SECS" in f for f in fails)
    assert "did you mean chunk_size?" in run.stdout
    assert run.stdout.rstrip().splitlines()[-1].startswith("FAIL: ")


def test_argument_errors_exit_2() -> None:
    run = _run("--port", "70000")
    assert run.returncode == 2
    assert "--port must be in 1..65535" in run.stderr


# -- configuration -----------------------------------------------------------------------------


def _statuses(checks: list[doctor.Check], name: str) -> list[str]:
    return [c.status for c in checks if c.name == name]


@pytest.mark.usefixtures("clean_env")
def test_missing_config_file_fails(tmp_path: Path) -> None:
    loaded = configuration.load(str(tmp_path / "nope.yaml"))
    (check,) = [c for c in loaded.checks if c.name == "config.file"]
    assert check.status == FAIL
    assert "not found" in check.detail
    assert check.fix


@pytest.mark.usefixtures("clean_env")
def test_config_file_from_environment_missing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_CONFIG_FILE", str(tmp_path / "gone.yaml"))
    loaded = configuration.load(None)
    (check,) = [c for c in loaded.checks if c.name == "config.file"]
    assert check.status == FAIL
    assert "LMCACHE_CONFIG_FILE" in check.detail


@pytest.mark.parametrize(
    ("content", "reason"),
    [("a: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "mapping"), (b"\xff\xfe\x00", "UTF-8")],
)
@pytest.mark.usefixtures("clean_env")
def test_unreadable_config_file_fails(tmp_path: Path, content: str | bytes, reason: str) -> None:
    path = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    loaded = configuration.load(str(path))
    (check,) = [c for c in loaded.checks if c.name == "config.file"]
    assert check.status == FAIL
    assert reason in check.detail


@pytest.mark.usefixtures("clean_env")
def test_config_directory_instead_of_file_fails(tmp_path: Path) -> None:
    loaded = configuration.load(str(tmp_path))
    assert _statuses(loaded.checks, "config.file") == [FAIL]


@pytest.mark.usefixtures("clean_env")
def test_every_bad_value_is_reported_and_good_values_still_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _write_config(
        tmp_path / "c.yaml",
        {
            "chunk_size": "many",
            "max_local_disk_size": -1,
            "local_cpu": "perhaps",
            "max_local_cpu_size": 0.5,
            "remote_url": "http://x",
        },
    )
    monkeypatch.setenv("LMCACHE_MIN_RETRIEVE_TOKENS", "-4")
    monkeypatch.setenv("LMCACHE_SAVE_DECODE_CACHE", "true")
    loaded = configuration.load(str(cfg))
    fails = [c.detail for c in loaded.checks if c.status == FAIL]
    assert len(fails) == 5, fails
    for key in ("chunk_size", "max_local_disk_size", "local_cpu", "remote_url"):
        assert any(f"'{key}'" in f for f in fails), key
    assert any("LMCACHE_MIN_RETRIEVE_TOKENS" in f for f in fails)
    assert loaded.config.get("max_local_cpu_size") == 0.5
    assert loaded.config.get("save_decode_cache") is True
    assert loaded.config.get("chunk_size") == 256  # the default, since the file's is bad


@pytest.mark.usefixtures("clean_env")
def test_unknown_keys_and_variables_warn_with_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _write_config(tmp_path / "c.yaml", {"max_local_cpu_sise": 1, "totally_new": 1})
    monkeypatch.setenv("LMCACHE_CHUNKSIZE", "256")
    loaded = configuration.load(str(cfg))
    warns = [c.detail for c in loaded.checks if c.status == WARN]
    assert any("'max_local_cpu_sise'" in w and "max_local_cpu_size?" in w for w in warns)
    assert any("'totally_new'" in w and "did you mean" not in w for w in warns)
    assert any("LMCACHE_CHUNKSIZE" in w and "LMCACHE_CHUNK_SIZE?" in w for w in warns)
    assert not any(c.status == FAIL for c in loaded.checks)


@pytest.mark.usefixtures("clean_env")
def test_secrets_never_in_config_messages(tmp_path: Path) -> None:
    cfg = _write_config(
        tmp_path / "c.yaml",
        {
            "remote_url": f"redis://u:{PASSWORD}@127.0.0.1:{_free_port()}/0",
            "internal_api_server_api_key": API_KEY,
            "extra_config": {"valkey_password": PASSWORD + "-valkey"},
            "chunk_size": "bad",
        },
    )
    report = doctor.Report()
    loaded = configuration.load(str(cfg))
    report.secrets.extend(loaded.secrets)
    report.config = loaded.config.to_dict()
    report.add(loaded.checks)
    report.add(tiers.check_tiers(loaded.config))
    assert set(loaded.secrets) == {PASSWORD, API_KEY, PASSWORD + "-valkey"}
    for out in (doctor.render_text(report), doctor.render_json(report)):
        assert PASSWORD not in out
        assert API_KEY not in out
    # the masking is the configuration's own, not only the scrubbing
    raw = " ".join(c.detail for c in report.checks) + json.dumps(report.config)
    assert PASSWORD not in raw
    assert API_KEY not in raw


# -- tiers -------------------------------------------------------------------------------------


def _config(**values: object) -> LMCacheEngineConfig:
    return LMCacheEngineConfig.from_defaults(**values)


def test_disk_directory_under_a_file_fails(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    check = tiers.check_disk_tier(_config(local_disk=str(afile / "kv"), max_local_disk_size=0.01))
    assert check is not None
    assert check.status == FAIL
    assert "is not a directory" in check.detail
    assert check.fix


def test_disk_path_that_is_a_file_fails(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    check = tiers.check_disk_tier(_config(local_disk=str(afile), max_local_disk_size=0.01))
    assert check is not None
    assert check.status == FAIL
    assert "not a directory" in check.detail


def test_disk_too_small_for_max_local_disk_size_fails(tmp_path: Path) -> None:
    check = tiers.check_disk_tier(_config(local_disk=str(tmp_path), max_local_disk_size=900_000))
    assert check is not None
    assert check.status == FAIL
    assert "lower max_local_disk_size" in check.fix


def test_disk_writable_and_not_yet_created(tmp_path: Path) -> None:
    check = tiers.check_disk_tier(_config(local_disk=str(tmp_path), max_local_disk_size=0.001))
    assert check is not None
    assert check.status == OK
    assert "writable" in check.detail
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    later = tmp_path / "a" / "b"
    check = tiers.check_disk_tier(_config(local_disk=str(later), max_local_disk_size=0.001))
    assert check is not None
    assert check.status == OK
    assert "does not exist yet" in check.detail
    assert not (tmp_path / "a").exists()


def test_no_disk_or_remote_tier_no_line() -> None:
    assert [c.name for c in tiers.check_tiers(_config())] == ["tier.local_cpu"]


def test_redis_unreachable_fails() -> None:
    port = _free_port()  # nothing listens there
    check = tiers.check_remote_tier(
        _config(remote_url=f"redis://127.0.0.1:{port}/0", blocking_timeout_secs=2)
    )
    assert check is not None
    assert check.status == FAIL
    assert "ConnectionError" in check.detail
    assert f"127.0.0.1:{port}" in check.detail
    assert "start the store" in check.fix


@pytest.mark.redis
def test_redis_wrong_password_fails_without_echoing_it(redis_user: str) -> None:
    url = redis_user.replace(PASSWORD, "not-the-" + PASSWORD)
    check = tiers.check_remote_tier(_config(remote_url=url, blocking_timeout_secs=2))
    assert check is not None
    assert check.status == FAIL
    assert "AuthenticationError" in check.detail
    assert PASSWORD not in check.detail
    assert "doctor:***@" in check.detail


@pytest.mark.redis
def test_redis_reachable_ok(redis_url: str) -> None:
    check = tiers.check_remote_tier(_config(remote_url=redis_url))
    assert check is not None
    assert check.status == OK
    assert "read back intact" in check.detail


def test_fs_remote_ok_and_under_a_file_fails(tmp_path: Path) -> None:
    check = tiers.check_remote_tier(_config(remote_url=f"fs://{tmp_path / 'shared'}"))
    assert check is not None
    assert check.status == OK
    assert list((tmp_path / "shared").iterdir()) == []  # probe chunk deleted
    afile = tmp_path / "afile"
    afile.write_text("x")
    check = tiers.check_remote_tier(_config(remote_url=f"fs://{afile / 'shared'}"))
    assert check is not None
    assert check.status == FAIL


def test_admin_port_in_use_fails() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = int(s.getsockname()[1])
        explicit = tiers.check_admin_port(_config(), port)
        enabled = tiers.check_admin_port(
            _config(internal_api_server_enabled=True, internal_api_server_port_start=port - 1)
        )
        unused = tiers.check_admin_port(_config(internal_api_server_port_start=port - 1))
    assert explicit.status == FAIL
    assert f"127.0.0.1:{port} in use" in explicit.detail
    assert "ss -ltnp" in explicit.fix
    assert enabled.status == FAIL
    assert "worker 0" in enabled.detail
    assert unused.status == WARN  # the admin API is off in vLLM; only serve would use it
    free = tiers.check_admin_port(_config(), port)
    assert free.status == OK


def test_admin_port_unbindable_host_fails() -> None:
    check = tiers.check_admin_port(_config(internal_api_server_host="192.0.2.1"), _free_port())
    assert check.status == FAIL
    assert "cannot be bound" in check.detail


# -- GPU, extension, CPU ------------------------------------------------------------------------


def test_kernel_launch_failure_is_a_fail() -> None:
    # NOTE: without a GPU the failing launch is driven on the meta device, where the op refuses
    # the cache (as a CUDA launch error would surface): the path from exception to FAIL line is
    # the one a GPU failure takes. The succeeding path runs on the CPU against itself.
    check = system.kernel_launch_check(torch.device("meta"))
    assert check.status == FAIL
    assert "paged_kv_gather did not run" in check.detail
    assert check.fix
    assert system.kernel_launch_check(torch.device("cpu")).status == OK


@pytest.mark.cuda
def test_kernel_launch_on_gpu_ok() -> None:
    assert system.kernel_launch_check(torch.device("cuda", 0)).status == OK
    assert all(c.status != FAIL for c in system.check_gpu())


def test_gpu_line_says_when_there_is_none() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: covered by test_kernel_launch_on_gpu_ok")
    (check,) = system.check_gpu()
    assert check.status == OK
    assert check.detail.startswith("no GPU visible to torch")


@pytest.mark.parametrize(
    ("cap", "archs", "expected"),
    [
        ((9, 0), ["80", "90"], "sass"),
        ((8, 6), ["80-real"], "sass"),
        ((8, 6), ["90-real"], "none"),
        ((10, 0), ["80-real", "90-real", "90-virtual"], "ptx"),
        ((7, 5), ["80", "90"], "none"),
        ((9, 0), ["native"], None),
        ((9, 0), [], None),
    ],
)
def test_arch_support(cap: tuple[int, int], archs: list[str], expected: str | None) -> None:
    assert system.arch_support(cap, archs) == expected


def test_extension_line_reports_cuda_archs() -> None:
    from lmcache_native import _native

    check = system.check_extension()
    assert check.status in (OK, FAIL)
    assert isinstance(_native.C.CUDA_ARCHS, str)
    if _native.HAS_CUDA:
        assert system.cuda_archs()
        assert all(a in check.detail for a in system.cuda_archs())
    else:
        assert system.cuda_archs() == []
        assert "no CUDA kernels" in check.detail


def test_cpu_isa_warns_when_copies_are_forced_to_sse2() -> None:
    flags = system.cpu_flags()
    if "avx2" not in flags:
        pytest.skip("this CPU has no AVX2, so SSE2 copies are its best")
    before = copy_isa()
    assert system.check_cpu_isa(flags).status == OK
    copy_set_isa("sse2")
    try:
        check = system.check_cpu_isa(flags)
    finally:
        copy_set_isa(before)
    assert check.status == WARN
    assert "LMC_COPY_ISA" in check.fix


def test_cpu_flags_parse(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile\n\nflags : other\n")
    assert system.cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "amx_tile"}
    assert system.cpu_flags(str(tmp_path / "missing")) == set()


def test_amx_cpu_reads_the_amx_packed_bf16_cache() -> None:
    flags = {"avx2", "avx512f", "amx_tile"}
    checks = system.check_cpu_layouts(128, flags, ask_vllm=False)
    status = {c.name: c for c in checks}
    bf16 = status["vllm_cpu_layout[bf16]"]
    assert bf16.status == OK
    assert "connector reads layout vllm_cpu_amx" in bf16.detail
    assert "ISA amx" in bf16.detail
    for label in ("fp16", "fp32"):
        assert status[f"vllm_cpu_layout[{label}]"].status == OK
        assert "vllm_cpu" in status[f"vllm_cpu_layout[{label}]"].detail
    # without AMX every dtype is read; a block size that is not a multiple of 32 gives vec16
    assert all(c.status == OK for c in system.check_cpu_layouts(128, {"avx2"}, ask_vllm=False))
    assert all("vec16" in c.detail for c in system.check_cpu_layouts(16, flags, ask_vllm=False))


def test_layout_rule_matches_vllm_on_this_cpu() -> None:
    pytest.importorskip("vllm", reason="vLLM is installed by scripts/test.sh; compared with it")
    flags = system.cpu_flags()
    for _, dtype in system.CPU_LAYOUT_DTYPES:
        for block in (16, 32, 128):
            for head in (64, 80, 128):
                assert system._vllm_attn_isa(dtype, block, head) == system._estimated_attn_isa(
                    dtype, block, head, flags
                ), (dtype, block, head)


def test_report_exit_code_and_render() -> None:
    report = doctor.Report(secrets=["s3cret"])
    report.add(doctor.Check("a", OK, "fine"))
    report.add([doctor.Check("b", WARN, "meh s3cret", "do x")])
    assert report.exit_code == 0
    report.add(doctor.Check("c", FAIL, "bad", "do y"))
    assert report.exit_code == 1
    text = doctor.render_text(report)
    assert "s3cret" not in text
    assert "meh ***" in text
    assert "fix: do y" in text
    assert text.splitlines()[-1] == "FAIL: 1 OK, 1 WARN, 1 FAIL"
    assert json.loads(doctor.render_json(report))["counts"] == {OK: 1, WARN: 1, FAIL: 1}
    with pytest.raises(ValueError, match="status must be one of"):
        doctor.Check("d", "MAYBE", "x")


# -- Redis Cluster: every node named in the URL ------------------------------------------------


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster of this module's own (its test kills a node)."""
    require_binaries()
    with RedisClusterServers(tmp_path_factory.mktemp("doctor-cluster")) as cluster:
        yield cluster


@pytest.mark.redis
def test_cluster_nodes_pinged_and_a_dead_node_fails(own_cluster: RedisClusterServers) -> None:
    config = _config(remote_url=own_cluster.url(), blocking_timeout_secs=2)
    checks = tiers.check_tiers(config)
    nodes = [c for c in checks if c.name.startswith("tier.remote.node[")]
    assert [c.name for c in nodes] == [
        f"tier.remote.node[127.0.0.1:{p}]" for p in own_cluster.ports
    ]
    assert all(c.status == OK for c in checks), checks
    own_cluster.nodes[1].kill()
    checks = tiers.check_tiers(config)
    dead = f"tier.remote.node[127.0.0.1:{own_cluster.ports[1]}]"
    status = {c.name: c for c in checks}
    assert status[dead].status == FAIL
    assert "does not answer PING" in status[dead].detail
    others = [f"tier.remote.node[127.0.0.1:{own_cluster.ports[i]}]" for i in (0, 2)]
    assert all(status[n].status == OK for n in others)
