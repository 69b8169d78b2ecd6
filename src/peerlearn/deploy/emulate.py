"""Link emulation for ``peerlearn deploy --emulate``: namespaces, veths, a bridge and tc.

Every node gets its own network namespace ``<prefix>-<i>`` with one interface ``eth0`` (an
address of ``deploy.emulate_subnet``), whose veth peer ``v<i>`` is a port of the bridge ``br0``
in a namespace of its own, ``<prefix>-br``. Nothing is created in the root namespace, so the
host's interfaces, routes and firewall are never touched, and deleting the run's namespaces
removes every interface with them (a veth dies with either end).

Rates come from the same ``NetworkSpec`` the simulator uses: a node's upload is an HTB class on
the egress of its ``eth0``, its download an HTB class on the egress of ``v<i>`` (bridge to node),
so a message from i to j is bounded by min(up_i, down_j) as in the flow model's access links.
Latency is ``netem delay`` when the kernel has it: a uniform end-to-end latency L is split L/2 on
the sender's upload and L/2 on the receiver's download (each packet crosses both); per-pair
latencies go whole onto the sender's per-destination class. Private per-pair links (Diablo with
``intra_region_mbps``) are per-destination HTB classes chosen by u32 filters on the destination
address. Links shared by several pairs cannot be expressed with per-node queues and are refused.

``deploy.tcp_congestion`` sets TCP's congestion control in every node namespace: the
namespace's ``net.ipv4.tcp_congestion_control`` (per namespace since Linux 4.15) when the kernel
lets a namespace take that algorithm as its default (it is in the host's
``tcp_allowed_congestion_control``), else the ``congctl`` metric of the namespace's subnet
route, which has no such restriction. Either way nothing outside the namespaces changes.

``deploy.segmentation_offload = "off"`` turns GSO, TSO and GRO off on both ends of every veth
(``ethtool -K``), so TCP hands the shapers single segments: HTB's leaf queues (1000 packets,
the veth's ``txqueuelen``) count packets, and with offload a packet can be a 64 KB super-packet.

The prefix is ``pl<launcher pid>``, so leftovers of a dead launcher are recognisable and
``peerlearn emulate-cleanup`` can remove them.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peerlearn import experiment
from peerlearn.config import ExperimentConfig
from peerlearn.deploy.errors import DeployError
from peerlearn.network.presets import NetworkSpec

PREFIX_RE = re.compile(r"^pl(\d+)-")
#: HTB wants a finite rate: what an uncapped class gets, with an explicit burst (tc computes
#: 0 bytes for such rates here) and a quantum that keeps tc from warning
_FAST = "10gbit burst 1mb cburst 1mb quantum 60000"


class EmulationUnavailable(DeployError):
    """No root, no ``ip``/``tc``: emulation cannot start (nothing was created)."""


def check_available() -> None:
    """Raise ``EmulationUnavailable`` with a one-line reason before anything is created."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise EmulationUnavailable(
            f"--emulate needs iproute2 ({' and '.join(missing)} not found on PATH)"
        )
    if os.geteuid() != 0:
        raise EmulationUnavailable(
            "--emulate needs root (network namespaces and tc need CAP_NET_ADMIN); "
            "run as root or without --emulate"
        )


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise DeployError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


#: a namespace's default congestion control, per namespace since Linux 4.15
CONGESTION_SYSCTL = "net.ipv4.tcp_congestion_control"
_PROC_IPV4 = Path("/proc/sys/net/ipv4")


def congestion_controls(kind: str) -> list[str]:
    """The kernel's ``tcp_<kind>_congestion_control``: ``available`` (loaded algorithms),
    ``allowed`` (those a namespace may take as default) or ``congestion`` (the host's default,
    a list of one); empty when unreadable."""
    name = "tcp_congestion_control" if kind == "congestion" else f"tcp_{kind}_congestion_control"
    try:
        return (_PROC_IPV4 / name).read_text().split()
    except OSError:
        return []


def check_congestion(name: str) -> None:
    """DeployError (one line) unless ``deploy.tcp_congestion = name`` can be applied here."""
    if name == "system":
        return
    available = congestion_controls("available")
    if name not in available:
        raise DeployError(
            f"deploy.tcp_congestion = {name!r} is not in this kernel's "
            f"net.ipv4.tcp_available_congestion_control ({' '.join(available) or 'unreadable'}); "
            f"load it (modprobe tcp_{name}) or use one of those"
        )


def set_congestion(ns: str, name: str, route: str, allowed: list[str]) -> str:
    """Make new TCP connections in namespace ``ns`` use ``name``, and check that they will.

    ``route`` is the namespace's subnet route (``"<subnet> dev eth0 ... src <address>"``);
    ``allowed`` the host's ``tcp_allowed_congestion_control``. Returns how it was set:
    ``"sysctl"`` or ``"route"``."""
    if name in allowed:
        _run("ip", "netns", "exec", ns, "sysctl", "-w", f"{CONGESTION_SYSCTL}={name}")
        out = _run("ip", "netns", "exec", ns, "sysctl", "-n", CONGESTION_SYSCTL).stdout
        got, how = out.strip(), "sysctl"
    else:
        # Linux refuses a namespace default outside the allowed list (EPERM) unless the host's
        # list is widened; a route metric picks the algorithm per connection without that
        _run("ip", "-n", ns, "route", "replace", *route.split(), "congctl", name)
        out = _run("ip", "-n", ns, "route", "show", route.split()[0]).stdout.split()
        got = out[out.index("congctl") + 1] if "congctl" in out else "(none)"
        how = "route"
    if got != name:
        raise DeployError(f"{ns}: TCP congestion control set by {how} to {name!r} reads {got!r}")
    return how


#: what ``deploy.segmentation_offload = "off"`` turns off on each veth end, and how ``ethtool -k``
#: names each feature when it reads them back
OFFLOAD_FEATURES = {
    "gso": "generic-segmentation-offload",
    "tso": "tcp-segmentation-offload",
    "gro": "generic-receive-offload",
}


def check_offload(setting: str) -> None:
    """DeployError (one line) unless ``deploy.segmentation_offload = setting`` can be applied."""
    if setting != "system" and shutil.which("ethtool") is None:
        raise DeployError(
            f"deploy.segmentation_offload = {setting!r} needs ethtool (not found on PATH); "
            "install it or use 'system'"
        )


def offload_off(ns: str, dev: str) -> None:
    """Turn GSO, TSO and GRO off on ``dev`` in namespace ``ns`` and check that they read off."""
    prefix = ("ip", "netns", "exec", ns, "ethtool")
    args = [word for feature in OFFLOAD_FEATURES for word in (feature, "off")]
    _run(*prefix, "-K", dev, *args)
    shown: dict[str, str] = {}
    for line in _run(*prefix, "-k", dev).stdout.splitlines():  # "name: on|off [fixed]"
        name, _, value = line.partition(":")
        shown[name.strip()] = value.split()[0] if value.split() else ""
    still_on = [name for name in OFFLOAD_FEATURES.values() if shown.get(name) != "off"]
    if still_on:
        raise DeployError(f"{dev} in {ns}: ethtool still reads {', '.join(still_on)} on")


def list_namespaces() -> list[str]:
    """Names of every network namespace (``ip netns list`` prints ``name (id: k)``)."""
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netem_available() -> bool:
    """Whether this kernel has ``sch_netem`` (probed on a dummy link in a scratch namespace)."""
    ns = f"pl{os.getpid()}-probe"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", ns, "link", "add", "name", "d0", "type", "dummy", check=False)
        if _run("ip", "-n", ns, "link", "show", "d0", check=False).returncode != 0:
            _run("ip", "-n", ns, "link", "add", "name", "d0", "type", "veth", "peer", "name", "d1")
        ok = _run(
            "tc",
            "-n",
            ns,
            "qdisc",
            "add",
            "dev",
            "d0",
            "root",
            "netem",
            "delay",
            "1ms",
            check=False,
        )
        return ok.returncode == 0
    finally:
        _run("ip", "netns", "del", ns, check=False)


@dataclass
class LinkPlan:
    """tc batch lines per node: ``node[i]`` for ``eth0`` in node i's namespace, ``bridge[i]``
    for ``v<i>`` in the bridge namespace; ``notes`` say what could not be emulated."""

    node: list[list[str]]
    bridge: list[list[str]]
    latency_split: str
    notes: list[str] = field(default_factory=list)


def _bits(Bps: float) -> str:
    return f"{max(round(Bps * 8), 8)}bit"


def _htb(rate: str) -> str:
    """``rate R ceil R`` (a class that never borrows), burst options after both."""
    r, _, extra = rate.partition(" ")
    return f"htb rate {r} ceil {r}" + (f" {extra}" if extra else "")


def _delay(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}us"


def _private_links(spec: NetworkSpec) -> np.ndarray:
    """(n, n) Bps of each pair's own link (inf: none); DeployError if a link is shared."""
    n = spec.n
    cap = np.full((n, n), np.inf)
    if not spec.links:
        return cap
    assert spec.route is not None
    users: dict[int, tuple[int, int]] = {}
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            route = tuple(spec.route(i, j))
            if len(route) > 1 or any(k in users for k in route):
                raise DeployError(
                    "--emulate cannot express this network: pair "
                    f"{i}->{j} crosses links shared with other pairs (route {route}); per-node "
                    "queues shape private links only (diablo_60n: set network.intra_region_mbps)"
                )
            for k in route:
                users[k] = (i, j)
                cap[i, j] = spec.links[k]
    return cap


def plan_links(spec: NetworkSpec, addresses: list[str], *, netem: bool) -> LinkPlan:
    """The tc commands that make the namespaces behave like ``spec`` (pure, for tests)."""
    n = spec.n
    pair_cap = _private_links(spec)
    lat = np.asarray(spec.latency_s, dtype=np.float64)
    off = lat[~np.eye(n, dtype=bool)]
    uniform_lat = off.size == 0 or bool(np.all(off == off[0]))
    L = float(off[0]) if off.size else 0.0
    per_pair = bool(np.isfinite(pair_cap).any()) or not uniform_lat
    notes: list[str] = []
    if off.size and off.max() > 0 and not netem:
        notes.append(
            "latency not emulated: this kernel has no sch_netem (simulated latency "
            + (f"{off.min() * 1e3:g}-" if off.min() != off.max() else "")
            + f"{off.max() * 1e3:g} ms end to end); only rates are shaped"
        )
    use_delay = netem and off.size > 0 and off.max() > 0
    node: list[list[str]] = []
    bridge: list[list[str]] = []
    for i in range(n):
        up, down = float(spec.up_Bps[i]), float(spec.down_Bps[i])
        lines: list[str] = []
        if not per_pair:
            if np.isfinite(up) or (use_delay and L > 0):
                rate = _bits(up) if np.isfinite(up) else _FAST
                lines += [
                    "qdisc add dev eth0 root handle 1: htb default 1",
                    f"class add dev eth0 parent 1: classid 1:1 {_htb(rate)}",
                ]
                if use_delay and L > 0:
                    lines.append(
                        f"qdisc add dev eth0 parent 1:1 handle 10: netem delay {_delay(L / 2)} "
                        "limit 100000"
                    )
        else:
            # an uncapped node has no parent class: the pairs' classes hang from the root
            top = _bits(up) if np.isfinite(up) else _FAST
            parent = "1:1" if np.isfinite(up) else "1:"
            lines.append("qdisc add dev eth0 root handle 1: htb default 2")
            if np.isfinite(up):
                lines.append(f"class add dev eth0 parent 1: classid 1:1 {_htb(top)}")
            lines.append(f"class add dev eth0 parent {parent} classid 1:2 {_htb(top)}")
            for j in range(n):
                if j == i:
                    continue
                c = min(up, float(pair_cap[i, j]))
                rate = _bits(c) if np.isfinite(c) else top
                cid = f"1:{j + 16:x}"
                lines += [
                    f"class add dev eth0 parent {parent} classid {cid} {_htb(rate)}",
                    f"filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst "
                    f"{addresses[j]}/32 flowid {cid}",
                ]
                if use_delay and lat[i, j] > 0:
                    lines.append(
                        f"qdisc add dev eth0 parent {cid} handle {j + 16:x}: netem delay "
                        f"{_delay(lat[i, j])} limit 100000"
                    )
        node.append(lines)
        blines: list[str] = []
        half = use_delay and not per_pair and L > 0
        if np.isfinite(down) or half:
            rate = _bits(down) if np.isfinite(down) else _FAST
            dev = f"v{i}"
            blines += [
                f"qdisc add dev {dev} root handle 1: htb default 1",
                f"class add dev {dev} parent 1: classid 1:1 {_htb(rate)}",
            ]
            if half:
                blines.append(
                    f"qdisc add dev {dev} parent 1:1 handle 10: netem delay {_delay(L / 2)} "
                    "limit 100000"
                )
        bridge.append(blines)
    split = (
        "per pair: whole latency on the sender's per-destination class"
        if per_pair
        else "half on the sender's upload, half on the receiver's download"
    )
    return LinkPlan(node, bridge, split if use_delay else "none", notes)


class EmulatedNetwork:
    """The namespaces, bridge and queues of one run; ``down()`` is idempotent and also runs at
    exit, so a crash of the launcher still removes them (SIGKILL: ``emulate-cleanup``)."""

    def __init__(
        self,
        spec: NetworkSpec,
        *,
        subnet: str = "10.213.0.0/16",
        prefix: str | None = None,
        latency: str = "auto",
        tcp_congestion: str = "system",
        segmentation_offload: str = "system",
    ) -> None:
        check_available()
        net = ipaddress.ip_network(subnet)
        if net.num_addresses - 2 < spec.n:
            raise DeployError(f"deploy.emulate_subnet {subnet} has too few addresses for {spec.n}")
        self.spec = spec
        self.prefix = prefix or f"pl{os.getpid()}"
        self.bridge_ns = f"{self.prefix}-br"
        self.namespaces = [f"{self.prefix}-{i}" for i in range(spec.n)]
        self.addresses = [str(net.network_address + i + 1) for i in range(spec.n)]
        self.prefixlen = net.prefixlen
        self.plan: LinkPlan | None = None
        self.latency = latency  # resolved by up(): netem, transport or off
        self.subnet = str(net)
        self.tcp_congestion = tcp_congestion  # "system" or an algorithm, set by up()
        self.congestion_set = "inherited"  # up(): "sysctl" or "route" when it sets one
        self.segmentation_offload = segmentation_offload  # "system" or "off" (both veth ends)
        self._up = False

    def up(self) -> LinkPlan:
        """Create everything; on any failure, remove what was created and raise."""
        existing = [ns for ns in list_namespaces() if ns.startswith(self.prefix + "-")]
        if existing:
            raise DeployError(
                f"namespaces {existing[:3]} already exist (run `peerlearn emulate-cleanup`)"
            )
        check_congestion(self.tcp_congestion)
        check_offload(self.segmentation_offload)
        allowed = congestion_controls("allowed")
        plan = self._plan()
        self._up = True
        atexit.register(self.down)
        try:
            br = self.bridge_ns
            _run("ip", "netns", "add", br)
            _run("ip", "-n", br, "link", "add", "name", "br0", "type", "bridge")
            _run("ip", "-n", br, "link", "set", "br0", "up")
            for i, ns in enumerate(self.namespaces):
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", br, "link", "add", "name", f"v{i}", "type", "veth", "peer",
                     "name", "eth0", "netns", ns)  # fmt: skip
                _run("ip", "-n", br, "link", "set", f"v{i}", "master", "br0", "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.addresses[i]}/{self.prefixlen}",
                     "dev", "eth0")  # fmt: skip
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                if self.segmentation_offload == "off":
                    offload_off(ns, "eth0")
                    offload_off(br, f"v{i}")
                _tc_batch(ns, plan.node[i])
                if self.tcp_congestion != "system":
                    src = self.addresses[i]
                    route = f"{self.subnet} dev eth0 proto kernel scope link src {src}"
                    self.congestion_set = set_congestion(ns, self.tcp_congestion, route, allowed)
            _tc_batch(br, [line for lines in plan.bridge for line in lines])
        except BaseException:
            self.down()
            raise
        self.plan = plan
        return plan

    def _plan(self) -> LinkPlan:
        """The tc plan, with ``latency`` resolved (auto: netem if the kernel has it)."""
        has_netem = netem_available() if self.latency in ("auto", "netem") else False
        if self.latency == "netem" and not has_netem:
            raise DeployError(
                "deploy.emulate_latency = netem but this kernel has no sch_netem "
                "(use auto or transport)"
            )
        if self.latency == "auto":
            self.latency = "netem" if has_netem else "transport"
        plan = plan_links(self.spec, self.addresses, netem=self.latency == "netem")
        if self.latency == "transport":
            plan.notes = [
                "latency emulated in the transport (no sch_netem): each frame waits "
                "latency[i, j] in the sender before ZeroMQ; TCP acknowledgements are not delayed"
            ]
            plan.latency_split = "transport: whole latency held in the sender, before the link"
        elif self.latency == "off":
            plan.notes = ["latency not emulated (deploy.emulate_latency = off)"]
        return plan

    def exec_prefix(self, i: int) -> list[str]:
        """What to put before a command to run it in node i's namespace."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def describe(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "prefix": self.prefix,
            "addresses": self.addresses,
            "up_mbps": [float(x) * 8 / 1e6 for x in self.spec.up_Bps],
            "down_mbps": [float(x) * 8 / 1e6 for x in self.spec.down_Bps],
            "latency": self.latency,
            "latency_split": plan.latency_split if plan else None,
            "notes": plan.notes if plan else [],
            "network": self.spec.description,
            "tcp_congestion": self.congestion(),
            "tcp_congestion_set": self.congestion_set,
            "segmentation_offload": self.segmentation_offload,
        }

    def congestion(self) -> str:
        """The congestion control the nodes' connections use (``"system"``: the host's)."""
        if self.tcp_congestion != "system":
            return self.tcp_congestion
        return " ".join(congestion_controls("congestion")) or "unknown"

    def down(self) -> None:
        """Kill what still runs inside, delete the namespaces (their interfaces go with them)."""
        if not self._up:
            return
        self._up = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.down)
        remove_namespaces([*self.namespaces, self.bridge_ns])


def _tc_batch(ns: str, lines: list[str]) -> None:
    if not lines:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".tc", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        _run("tc", "-n", ns, "-batch", f.name)
    finally:
        os.unlink(f.name)


def remove_namespaces(names: list[str]) -> list[str]:
    """SIGKILL the processes inside each namespace, then delete it; returns those deleted."""
    present = set(list_namespaces())
    removed = []
    for ns in names:
        if ns not in present:
            continue
        for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if _run("ip", "netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(prefix: str | None = None, *, force: bool = False) -> list[str]:
    """Remove the namespaces of dead runs (``pl<pid>-*`` whose launcher pid is gone); with
    ``prefix`` only those starting with it; ``force`` also removes those of live launchers."""
    check_available()
    doomed = []
    for ns in list_namespaces():
        m = PREFIX_RE.match(ns)
        if m is None or (prefix is not None and not ns.startswith(prefix)):
            continue
        if force or not _alive(int(m.group(1))):
            doomed.append(ns)
    # node namespaces first, so the bridge's veth ends go last
    doomed.sort(key=lambda ns: ns.endswith("-br"))
    return remove_namespaces(doomed)


def network_spec(cfg: ExperimentConfig) -> NetworkSpec:
    """The simulator's network for ``cfg`` (same preset, same parameters)."""
    try:
        return experiment.network_spec(cfg)
    except ValueError as exc:
        raise DeployError(f"network: {exc}") from None
