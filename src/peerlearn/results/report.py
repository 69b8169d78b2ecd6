"""The short table printed at the end of a run."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt_bytes(x: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(x) < 1000 or unit == "TB":
            return f"{x:.1f} {unit}" if unit != "B" else f"{x:.0f} B"
        x /= 1000
    return f"{x:.1f} TB"


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['name']} ({summary['algorithm']}, {summary['nodes']} nodes)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    final = summary["final"]
    if summary.get("diverged"):
        at = summary.get("diverged_at_s")
        table.add_row(
            "[bold red]DIVERGED[/bold red]",
            "[bold red]NaN/inf loss" + ("" if at is None else f" from t={at:.1f} s") + "[/]",
        )

    def num(key: str, digits: int) -> str:
        v = final.get(key, 0.0)
        return "nan" if v is None else f"{v:.{digits}f}"

    for key in ("test_acc", "test_rmse", "test_loss"):
        if f"{key}_mean" in final:
            table.add_row(
                key.replace("_", " "),
                f"{num(f'{key}_mean', 4)} ± {num(f'{key}_std', 4)}"
                f"  [{num(f'{key}_min', 3)}, {num(f'{key}_max', 3)}]",
            )
    for target, t in summary["time_to_accuracy_s"].items():
        table.add_row(f"time to acc {target}", "never" if t is None else f"{t:.1f} s")
    # a deployed run's clock is the wall clock since the common start
    clock = "run time (wall clock)" if summary.get("engine") == "deploy" else "virtual time"
    table.add_row(clock, f"{summary['virtual_time_s']:.1f} s")
    table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
    it = summary["iterations"]
    table.add_row("iterations per node", f"{it['mean']:.1f} (min {it['min']}, max {it['max']})")
    b = summary["bytes"]
    table.add_row(
        "bytes sent / delivered / wasted",
        f"{_fmt_bytes(b['sent'])} / {_fmt_bytes(b['delivered'])} / {_fmt_bytes(b['wasted'])}",
    )
    return table
