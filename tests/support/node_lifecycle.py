"""The test bed node's processes: started, stopped and torn down by their own ids only.

Why apart from `node.py`: this is the part that must be right even after a crash, when
nothing but the instance directory is left (`cleanup_stale` on the next start). A process is
stopped only if its pid still has the start time recorded when the test bed started it; shims
are found by the containerd socket in their argv; pod namespaces by their veth peer in this
instance's namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from support.node_config import (
    _CLONE_NEWNET,
    NETNS_DIR,
    SHIM_SOCKET_DIR,
    STOP_TIMEOUT_S,
    default_base_dir,
)

# --- processes, by recorded pid + start time ---------------------------------------------


def start_time(pid: int) -> int | None:
    """Kernel start time of pid (clock ticks since boot), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _same_process(pid: int, start: int) -> bool:
    return start_time(pid) == start


def die_with_parent() -> None:
    """Child-side: SIGKILL when the process that started it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _signal_and_wait(pid: int, start: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by pid, then SIGKILL; only if pid is still that process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _same_process(pid, start):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _same_process(pid, start):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)


def run(
    argv: Sequence[str], check: bool = True, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy"}


def node_env(**extra: str) -> dict[str, str]:
    """os.environ without proxy settings (nothing in the namespace can reach a proxy; a Go
    client would otherwise send the API server's traffic to one), plus extra."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    return {**env, **extra}


def enter_netns(path: str) -> None:
    """Thread initializer: move this thread (only) into the network namespace at path."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


# --- teardown, also of a crashed instance ------------------------------------------------------


def _recorded_pid(instance: Path, name: str) -> tuple[int, int] | None:
    try:
        pid, start = (instance / "pids" / name).read_text().split()
        return int(pid), int(start)
    except (OSError, ValueError):
        return None


def _stop_recorded(instance: Path, name: str) -> None:
    rec = _recorded_pid(instance, name)
    if rec is not None:
        _signal_and_wait(*rec)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _shim_pids(socket: Path) -> list[int]:
    """containerd shims started for this instance: their argv names our containerd socket."""
    pids = []
    needle = str(socket).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-address" in argv and needle in argv and b"containerd-shim" in argv[0]:
            pids.append(int(entry.name))
    return pids


def _kill_tree(roots: list[int]) -> None:
    """SIGKILL the shims and every descendant (container processes), leaves first."""
    children = _children_map()
    order: list[tuple[int, int]] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        start = start_time(pid)
        if start is not None:
            order.append((pid, start))
        stack.extend(children.get(pid, []))
    for pid, start in reversed(order):
        if _same_process(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_same_process(p, s) for p, s in order):
        time.sleep(0.05)


def _ctr(socket: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return run(["ctr", "--address", str(socket), "-n", "k8s.io", *args], check=False,
                timeout=timeout)  # fmt: skip


def _stop_containers(socket: Path) -> None:
    """Kill and delete every task and container of this containerd (namespace k8s.io)."""
    for task in _ctr(socket, "tasks", "ls", "-q").stdout.split():
        _ctr(socket, "tasks", "kill", "-a", "-s", "SIGKILL", task)
    for task in _ctr(socket, "tasks", "ls", "-q").stdout.split():
        _ctr(socket, "tasks", "delete", "-f", task)
    for container in _ctr(socket, "containers", "ls", "-q").stdout.split():
        _ctr(socket, "containers", "delete", container)


def owned_pod_netns(netns: str) -> list[str]:
    """The `cni-*` namespaces whose veth peer lives in our node namespace `netns`."""
    owned = []
    for path in sorted(NETNS_DIR.glob("cni-*")):
        ids = run(["ip", "-n", path.name, "-j", "netns", "list-id"], check=False, timeout=10)
        if ids.returncode != 0 or not ids.stdout.strip():
            continue
        with contextlib.suppress(json.JSONDecodeError):
            if any(entry.get("name") == netns for entry in json.loads(ids.stdout)):
                owned.append(path.name)
    return owned


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or under prefix, deepest first (from /proc/self/mountinfo)."""
    base = str(prefix).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == base or point.startswith(base + "/"):
            points.append(point)
    return sorted(points, key=lambda p: (p.count("/"), p), reverse=True)


def teardown_instance(instance: Path, node_bin: Path | None = None) -> None:
    """Remove everything an instance made, using only what it recorded in its directory."""
    try:
        owner = json.loads((instance / "owner.json").read_text())
    except (OSError, json.JSONDecodeError):
        owner = {}
    netns = owner.get("netns", instance.name)
    socket = instance / "containerd" / "containerd.sock"
    _stop_recorded(instance, "kubelet")
    container_ids = {
        p.name
        for p in (instance / "containerd/state/io.containerd.runtime.v2.task/k8s.io").glob("*")
    }
    rec = _recorded_pid(instance, "containerd")
    if rec is not None and _same_process(*rec) and socket.exists():
        container_ids |= set(_ctr(socket, "containers", "ls", "-q").stdout.split())
        _stop_containers(socket)
    _stop_recorded(instance, "containerd")
    _kill_tree(_shim_pids(socket))
    for cid in container_ids:  # the shims' sockets: containerd names them by address/ns/id
        digest = hashlib.sha256(os.path.join(str(socket), "k8s.io", cid).encode()).hexdigest()
        with contextlib.suppress(OSError):
            (SHIM_SOCKET_DIR / digest).unlink()
    pod_netns: list[str] = []
    if (NETNS_DIR / netns).exists():
        pod_netns = owned_pod_netns(netns)
        with contextlib.suppress(OSError):  # for a teardown cut short and retried
            (instance / "pod-netns").write_text("\n".join(pod_netns))
        if node_bin is not None and (NETNS_DIR / netns).exists():
            run(["nsenter", f"--net={NETNS_DIR / netns}", "--",
                  str(node_bin / "kube-proxy"), "--cleanup"],
                 check=False, timeout=30)  # fmt: skip
    else:
        with contextlib.suppress(OSError):
            pod_netns = (instance / "pod-netns").read_text().split()
    for name in pod_netns:
        run(["ip", "netns", "delete", name], check=False)
    for name in ("kuberay-operator", "coredns", "kube-proxy", "kube-scheduler",
                 "kube-controller-manager", "kube-apiserver", "etcd"):  # fmt: skip
        _stop_recorded(instance, name)
    for point in mounts_under(instance):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)
    for cid in container_ids:  # empty cgroups runc left when its task was killed outright
        for cgroup in Path("/sys/fs/cgroup").glob(f"*/k8s.io/{cid}"):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    if (NETNS_DIR / netns).exists():
        run(["ip", "netns", "delete", netns], check=False)
    shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)
    pod_logs = str(instance / "pod-logs")
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if os.readlink(link).startswith(pod_logs):
                link.unlink()
    results = Path("/var/lib/cni/results")  # libcni's cache: one file per attachment
    for result in results.glob(f"mainsail-{instance.name}-*"):
        result.unlink(missing_ok=True)
    for cid in container_ids:
        (results / f"cni-loopback-{cid}-lo").unlink(missing_ok=True)
    shutil.rmtree(instance, ignore_errors=True)


def cleanup_stale(base: Path | None = None) -> list[str]:
    """Tear down instances under base whose owner process is gone; returns their ids."""
    base = base or default_base_dir()
    if not base.is_dir():
        return []
    cleaned = []
    with (base / ".cleanup.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two starts never tear down the same leftover at once
        for instance in sorted(base.glob("msn-*")):
            try:
                owner = json.loads((instance / "owner.json").read_text())
                alive = _same_process(int(owner["pid"]), int(owner["start"]))
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                # owner.json is written right after mkdir (and removed last by its own
                # teardown): leave a dir that is new or already going away.
                try:
                    alive = time.time() - instance.stat().st_mtime < 30
                except OSError:
                    continue
            if not alive:
                teardown_instance(instance)
                cleaned.append(instance.name)
    return cleaned
