"""Trace files: capacities over time and node availability, in our formats and FedScale's.

Capacity trace (CSV), one change a row, piecewise constant until the node's next row::

    time_s,node,up_mbps,down_mbps[,compute_factor]

An empty ``compute_factor`` (or no such column) leaves the node's compute factor as it is. JSON:
a list of objects with the same keys (``compute_factor`` optional).

Availability trace (CSV) ``time_s,node,online`` with ``online`` 1 or 0; JSON: a list of objects
with those keys. A node is online until its first row says otherwise.

FedScale (``format = "fedscale"``): its device-capacity file maps a client id to
``{"computation": ..., "communication": ...}`` (compute time per sample, link speed in kbit/s)
and its availability file maps a client id to ``{"active": [...], "inactive": [...],
"finish_time": ...}`` (a client is online from ``active[i]`` until ``inactive[i]``, repeating
every ``finish_time`` seconds). Both are read from FedScale's pickles (plain dicts and lists only:
any other object in the pickle is refused) or from the same structure in JSON.

Every error is one line: ``file:line: what is wrong`` (``file: entry k: ...`` in JSON).
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peerlearn.network.presets import mbps_to_Bps


class TraceError(ValueError):
    """A trace file that cannot be used; the message is one line naming file and line."""


@dataclass(frozen=True, slots=True)
class CapacityChange:
    """From ``time_s`` on, ``node`` has these capacities (bytes/s); None keeps a value as is."""

    time_s: float
    node: int
    up_Bps: float | None
    down_Bps: float | None
    compute_factor: float | None = None


@dataclass(frozen=True, slots=True)
class AvailabilityChange:
    """From ``time_s`` on, ``node`` is online (True) or offline (False)."""

    time_s: float
    node: int
    online: bool


CAPACITY_COLUMNS = ("time_s", "node", "up_mbps", "down_mbps")
AVAILABILITY_COLUMNS = ("time_s", "node", "online")


def trace_format(path: str, fmt: str) -> str:
    """``fmt``, or for "auto" the format the file name implies (.csv, .json, else fedscale)."""
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".json": "json"}.get(suffix, "fedscale")


def load_capacity_trace(
    path: str, n: int, fmt: str = "auto", clients: list[int] | None = None
) -> list[CapacityChange]:
    """The changes of a capacity trace, sorted by time (file order on ties)."""
    fmt = trace_format(path, fmt)
    if fmt == "fedscale":
        return _fedscale_devices(path, _read_fedscale(path), n, clients)
    rows = _read_rows(path, fmt, CAPACITY_COLUMNS, optional=("compute_factor",))
    out = []
    for where, row in rows:
        t = _time(path, where, row["time_s"])
        node = _node(path, where, row["node"], n)
        up = mbps_to_Bps(_positive(path, where, "up_mbps", row["up_mbps"]))
        down = mbps_to_Bps(_positive(path, where, "down_mbps", row["down_mbps"]))
        raw = row.get("compute_factor")
        factor = None if raw in (None, "") else _positive(path, where, "compute_factor", raw)
        out.append(CapacityChange(t, node, up, down, factor))
    return sorted(out, key=lambda c: c.time_s)


def load_availability_trace(
    path: str,
    n: int,
    fmt: str = "auto",
    clients: list[int] | None = None,
    horizon_s: float | None = None,
) -> Iterator[AvailabilityChange]:
    """The changes of an availability trace, in time order (FedScale's repeat past
    ``finish_time``; ``horizon_s`` bounds how far, None for ever)."""
    fmt = trace_format(path, fmt)
    if fmt == "fedscale":
        return _fedscale_availability(path, _read_fedscale(path), n, clients, horizon_s)
    rows = _read_rows(path, fmt, AVAILABILITY_COLUMNS)
    out = []
    for where, row in rows:
        t = _time(path, where, row["time_s"])
        node = _node(path, where, row["node"], n)
        raw = str(row["online"]).strip().lower()
        if raw not in ("0", "1", "true", "false"):
            raise TraceError(f"{path}:{where}: online must be 1 or 0, got {row['online']!r}")
        out.append(AvailabilityChange(t, node, raw in ("1", "true")))
    return iter(sorted(out, key=lambda c: c.time_s))


# -- our formats ----------------------------------------------------------------------------------


def _read_rows(
    path: str, fmt: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs: where is a line number (CSV) or "entry k" (JSON)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read trace: {exc}") from None
    allowed = set(columns) | set(optional)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(data, list):
            raise TraceError(f"{path}: a JSON trace is a list of objects with {list(columns)}")
        rows = []
        for k, item in enumerate(data):
            where = f"entry {k}"
            if not isinstance(item, dict):
                raise TraceError(f"{path}: {where}: not an object")
            _check_keys(path, where, set(item), columns, allowed)
            rows.append((where, item))
        return rows
    if fmt != "csv":
        raise TraceError(f"{path}: unknown trace format {fmt!r}")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise TraceError(f"{path}:1: empty file; expected a header {','.join(columns)}")
    header = [h.strip() for h in header]
    _check_keys(path, "1", set(header), columns, allowed)
    rows = []
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise TraceError(f"{path}:{line}: {len(fields)} fields, the header has {len(header)}")
        rows.append((str(line), {h: f.strip() for h, f in zip(header, fields, strict=True)}))
    return rows


def _check_keys(
    path: str, where: str, keys: set[str], columns: tuple[str, ...], allowed: set[str]
) -> None:
    missing = [c for c in columns if c not in keys]
    if missing:
        raise TraceError(f"{path}:{where}: missing column(s) {missing}; need {list(columns)}")
    extra = sorted(keys - allowed)
    if extra:
        raise TraceError(f"{path}:{where}: unknown column(s) {extra}; allowed {sorted(allowed)}")


def _number(path: str, where: str, name: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{where}: {name} is not a number: {raw!r}") from None
    if isinstance(raw, bool) or not math.isfinite(value):
        raise TraceError(f"{path}:{where}: {name} must be a finite number, got {raw!r}")
    return value


def _time(path: str, where: str, raw: Any) -> float:
    t = _number(path, where, "time_s", raw)
    if t < 0:
        raise TraceError(f"{path}:{where}: time_s must be >= 0, got {raw!r}")
    return t


def _positive(path: str, where: str, name: str, raw: Any) -> float:
    value = _number(path, where, name, raw)
    if value <= 0:
        raise TraceError(f"{path}:{where}: {name} must be > 0, got {raw!r}")
    return value


def _node(path: str, where: str, raw: Any, n: int) -> int:
    value = _number(path, where, "node", raw)
    if value != int(value) or not 0 <= value < n:
        raise TraceError(f"{path}:{where}: node must be an integer in 0..{n - 1}, got {raw!r}")
    return int(value)


# -- FedScale ------------------------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, numbers and strings only: a trace pickle never needs a class, and
    refusing every global keeps a crafted file from running code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain data is allowed")


def _read_fedscale(path: str) -> dict:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc}") from None
    if raw[:1] in (b"{", b" ", b"\n"):
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TraceError(f"{path}: not valid JSON: {exc}") from None
    else:
        try:
            data = _PlainUnpickler(io.BytesIO(raw)).load()
        except Exception as exc:  # any malformed pickle: one line, never a traceback
            raise TraceError(f"{path}: not a FedScale trace pickle: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{path}: a FedScale trace maps client ids to records; got none")
    try:
        return {int(k): v for k, v in data.items()}
    except (TypeError, ValueError):
        raise TraceError(f"{path}: FedScale client ids must be integers") from None


def _pick_clients(path: str, data: dict, n: int, clients: list[int] | None) -> list[int]:
    if clients is None:
        ids = sorted(data)
        if len(ids) < n:
            raise TraceError(f"{path}: {len(ids)} clients in the trace, the run has {n} nodes")
        return ids[:n]
    if len(clients) != n:
        raise TraceError(f"{path}: clients lists {len(clients)} ids; need one per node ({n})")
    missing = [c for c in clients if c not in data]
    if missing:
        raise TraceError(f"{path}: client(s) {missing[:5]} not in the trace")
    return list(clients)


def _fedscale_devices(
    path: str, data: dict, n: int, clients: list[int] | None
) -> list[CapacityChange]:
    """Static per-client speeds at time 0: up = down = communication (kbit/s); compute factor =
    computation / the median over the chosen clients (so the median client is nominal speed)."""
    ids = _pick_clients(path, data, n, clients)
    comp, comm = [], []
    for c in ids:
        rec = data[c]
        where = f"client {c}"
        if not isinstance(rec, dict) or "computation" not in rec or "communication" not in rec:
            raise TraceError(f"{path}: {where}: needs 'computation' and 'communication'")
        comp.append(_positive(path, where, "computation", rec["computation"]))
        comm.append(_positive(path, where, "communication", rec["communication"]))
    median = float(np.median(comp))
    return [
        CapacityChange(0.0, i, mbps_to_Bps(kbps / 1e3), mbps_to_Bps(kbps / 1e3), c / median)
        for i, (c, kbps) in enumerate(zip(comp, comm, strict=True))
    ]


def _fedscale_availability(
    path: str, data: dict, n: int, clients: list[int] | None, horizon_s: float | None
) -> Iterator[AvailabilityChange]:
    ids = _pick_clients(path, data, n, clients)
    periods: list[tuple[float, list[tuple[float, float]]]] = []
    for c in ids:
        rec = data[c]
        where = f"client {c}"
        if not isinstance(rec, dict) or not {"active", "inactive", "finish_time"} <= set(rec):
            raise TraceError(f"{path}: {where}: needs 'active', 'inactive' and 'finish_time'")
        active, inactive = rec["active"], rec["inactive"]
        if not isinstance(active, list) or not isinstance(inactive, list):
            raise TraceError(f"{path}: {where}: 'active' and 'inactive' must be lists")
        if len(active) != len(inactive):
            raise TraceError(f"{path}: {where}: {len(active)} active but {len(inactive)} inactive")
        finish = _positive(path, where, "finish_time", rec["finish_time"])
        spans = []
        last = 0.0
        for a, b in zip(active, inactive, strict=True):
            a = _number(path, where, "active", a)
            b = _number(path, where, "inactive", b)
            if not last <= a < b <= finish:
                raise TraceError(
                    f"{path}: {where}: active/inactive must increase within finish_time "
                    f"({finish:g}); got [{a:g}, {b:g}) after {last:g}"
                )
            spans.append((a, b))
            last = b
        periods.append((finish, spans))
    return _repeat_spans(periods, horizon_s)


def _repeat_spans(
    periods: list[tuple[float, list[tuple[float, float]]]], horizon_s: float | None
) -> Iterator[AvailabilityChange]:
    """Online spans repeated every period, merged over nodes in time order (ties by node)."""
    import heapq

    def per_node(node: int, finish: float, spans: list[tuple[float, float]]):
        state = True  # a node is online until told otherwise
        k = 0
        while True:
            base = k * finish
            if horizon_s is not None and base > horizon_s:
                return
            if not spans:  # never online
                if state:
                    yield AvailabilityChange(0.0, node, False)
                return
            if spans[0][0] > 0 and state:  # FedScale: offline outside the active spans
                yield AvailabilityChange(base, node, False)
                state = False
            for a, b in spans:
                for t, online in ((base + a, True), (base + b, False)):
                    if online != state:
                        yield AvailabilityChange(t, node, online)
                        state = online
            k += 1

    gens = [per_node(i, f, s) for i, (f, s) in enumerate(periods)]
    yield from heapq.merge(*gens, key=lambda c: (c.time_s, c.node))
