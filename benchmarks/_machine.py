"""Machine, software and run-context information recorded with every benchmark result.

Reusable by all benchmarks::

    from _machine import cpu_times, cpu_usage, machine_info, machine_markdown, own_cpu_seconds, write_results

    info = machine_info()                   # call after importing jax (and slamjax)
    before, own0 = cpu_times(), own_cpu_seconds()
    ...                                     # the measurements
    data["cpu_usage"] = cpu_usage(before, cpu_times(), own_cpu_seconds() - own0)  # busy/steal/other processes
    write_results("my_bench", data, machine_markdown(info) + ...)   # results/my_bench.{json,md}

Everything here is best effort: a field that cannot be read is ``None`` instead of an
error, so a benchmark never fails because of the environment it runs in. Nothing here
runs git or any other external command except ``nvidia-smi`` (only when JAX sees a GPU).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = [
    "RESULTS_DIR",
    "cpu_times",
    "cpu_usage",
    "machine_info",
    "machine_markdown",
    "own_cpu_seconds",
    "write_results",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

_PACKAGES = ("jax", "jaxlib", "numpy", "equinox", "scipy", "slamjax")
_ENV_VARS = (
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
    "JAX_COMPILATION_CACHE_DIR",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
)


def _read(path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo")
    if text:
        for line in text.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _cpu_flags() -> list[str] | None:
    """The SIMD-relevant CPU flags (AVX, FMA, AMX ...); they explain most CPU speed differences."""
    text = _read("/proc/cpuinfo")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "sse4")))
    return None


def _meminfo() -> dict[str, float | None]:
    out: dict[str, float | None] = {"total_gib": None, "available_gib": None}
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                kib = float(rest.split()[0])
                out["total_gib" if key == "MemTotal" else "available_gib"] = round(kib / 2**20, 2)
    elif hasattr(os, "sysconf"):
        try:
            out["total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
        except (ValueError, OSError):
            pass
    return out


def _cgroup_cpu_limit() -> float | None:
    """CPU quota of the container (cgroup v2 ``cpu.max``) in cores; None when unlimited/unknown."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if not text:
        return None
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    try:
        return float(quota) / float(period)
    except ValueError:
        return None


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, int] | None:
    """Aggregate CPU time counters from ``/proc/stat`` (clock ticks); pair with :func:`cpu_usage`."""
    text = _read("/proc/stat")
    if not text or not text.startswith("cpu "):
        return None
    values = [int(v) for v in text.splitlines()[0].split()[1:]]
    return dict(zip(_STAT_FIELDS, values, strict=False))


def own_cpu_seconds() -> float | None:
    """User + system CPU seconds used so far by this process and its waited-for children."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def cpu_usage(before: dict | None, after: dict | None, own_cpu_s: float | None = None) -> dict[str, float] | None:
    """Fractions of all CPU time spent busy/idle/iowait/steal between two :func:`cpu_times` snapshots.

    With ``own_cpu_s`` (the benchmark's own CPU seconds over the same interval, see
    :func:`own_cpu_seconds`) it adds ``other_processes``: the fraction of the machine's
    CPU time used by everything else. ``steal`` > a few % (a VM whose host runs other
    guests) or a large ``other_processes`` share means the timings were disturbed.
    """
    if not before or not after:
        return None
    delta = {k: after[k] - before.get(k, 0) for k in after}
    total = sum(delta.values())
    if total <= 0:
        return None
    busy = total - delta.get("idle", 0) - delta.get("iowait", 0) - delta.get("steal", 0)
    out = {
        "busy": busy / total,
        "idle": delta.get("idle", 0) / total,
        "iowait": delta.get("iowait", 0) / total,
        "steal": delta.get("steal", 0) / total,
    }
    if own_cpu_s is not None:
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        out["other_processes"] = max(0.0, busy / tick - own_cpu_s) / (total / tick)
    return out


def _loadavg() -> list[float] | None:
    text = _read("/proc/loadavg")
    return [float(v) for v in text.split()[:3]] if text else None


def _versions() -> dict[str, str | None]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            mod = sys.modules.get(name)
            out[name] = getattr(mod, "__version__", None)
    return out


def _git_head(root: Path = REPO_ROOT) -> str | None:
    """The checked-out commit of the repository at ``root``, read from ``.git`` files (no git
    command; the tree may be dirty). A worktree's ``.git`` file points to its own git dir."""
    git = root / ".git"
    if git.is_file():  # worktree: "gitdir: <path>"; its refs live in the common dir
        text = _read(git) or ""
        if not text.startswith("gitdir:"):
            return None
        wt = Path(text.split(":", 1)[1].strip())
        head = _read(wt / "HEAD")
        if head and not head.strip().startswith("ref:"):
            return head.strip()
        common = _read(wt / "commondir")
        git = (wt / common.strip()).resolve() if common else wt
        if head:
            sha = _read(git / head.strip().split(None, 1)[1])
            return sha.strip() if sha else None
        return None
    head = _read(git / "HEAD")
    if head is None:
        return None
    head = head.strip()
    if not head.startswith("ref:"):
        return head
    ref = head.split(None, 1)[1]
    sha = _read(git / ref)
    if sha:
        return sha.strip()
    packed = _read(git / "packed-refs") or ""
    for line in packed.splitlines():
        if line.endswith(" " + ref):
            return line.split()[0]
    return None


def _nvidia_smi() -> list[str] | None:
    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def _jax_info() -> dict:
    try:
        import jax
    except ImportError:
        return {"available": False}
    devices = jax.devices()
    info = {
        "available": True,
        "default_backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kinds": sorted({d.device_kind for d in devices}),
        "n_devices": len(devices),
        "x64_enabled": bool(jax.config.read("jax_enable_x64")),
    }
    if info["default_backend"] == "gpu":
        info["nvidia_smi"] = _nvidia_smi()
    return info


def machine_info() -> dict:
    """Machine, Python, package versions, JAX backend/devices, date and command line.

    Call it after the benchmark has imported jax (and set any JAX config), so the
    recorded backend and x64 mode are the ones the benchmark ran with.
    """
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    slamjax_mod = sys.modules.get("slamjax")
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": {
            "model": _cpu_model(),
            "machine": platform.machine(),
            "os_cpu_count": os.cpu_count(),
            "affinity_count": None if affinity is None else len(affinity),
            "affinity": affinity,
            "cgroup_cpu_limit": _cgroup_cpu_limit(),
            "simd_flags": _cpu_flags(),
        },
        "memory": _meminfo(),
        "loadavg_at_start": _loadavg(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "versions": _versions(),
        "slamjax_path": None if slamjax_mod is None else str(Path(slamjax_mod.__file__).resolve().parent),
        # the commit of the slamjax actually imported (PYTHONPATH may point at another checkout)
        "git_head": _git_head(Path(slamjax_mod.__file__).resolve().parent.parent) if slamjax_mod else _git_head(),
        "jax": _jax_info(),
        "env": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
    }


def machine_markdown(info: dict) -> str:
    """A markdown bullet list of :func:`machine_info`."""
    cpu, mem, jx = info["cpu"], info["memory"], info["jax"]
    cores = f"os.cpu_count() = {cpu['os_cpu_count']}, affinity mask = {cpu['affinity_count']} cores"
    if cpu.get("cgroup_cpu_limit"):
        cores += f", cgroup quota = {cpu['cgroup_cpu_limit']:g} cores"
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        f"- Date (UTC): {info['date_utc']}",
        f"- Command: `{info['command']}` (cwd `{info['cwd']}`)",
        f"- CPU: {cpu['model']} ({cpu['machine']}); {cores}",
        f"- SIMD: {' '.join(cpu['simd_flags'] or []) or 'unknown'}",
        f"- RAM: {mem['total_gib']} GiB total, {mem['available_gib']} GiB available at start; "
        f"load average at start {info.get('loadavg_at_start')}",
        f"- Platform: {info['platform']}; Python {info['python']['version']}",
        f"- Versions: {versions}",
        f"- slamjax imported from: `{info['slamjax_path']}` (git HEAD {info['git_head'] or 'unknown'})",
    ]
    if jx.get("available"):
        lines.append(
            f"- JAX backend: {jx['default_backend']}; devices: {', '.join(jx['devices'])} "
            f"({', '.join(jx['device_kinds'])}); x64 enabled: {jx['x64_enabled']}"
        )
        if jx.get("nvidia_smi"):
            lines.append(f"- nvidia-smi: {'; '.join(jx['nvidia_smi'])}")
    if info["env"]:
        lines.append("- Environment: " + ", ".join(f"`{k}={v}`" for k, v in info["env"].items()))
    return "\n".join(lines)


def write_results(name: str, data: dict, markdown: str, out_dir=None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; returns both paths."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    md_path = out_dir / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def _json_default(obj):
    # numpy scalars/arrays without importing numpy here
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
