"""Optional PNG plots of a results document; matplotlib is not a dependency: without it, a note."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

_BOOT_LABELS = {
    "clean": "after a clean stop",
    "unclean": "after kill -9, tail 0",
    "tail": "after kill -9, 10k-event tail",
}


def plot(doc: dict[str, Any], stem: Path) -> str:
    """Write `<stem>-latency.png` and `<stem>-boot.png`; returns what was done."""
    if importlib.util.find_spec("matplotlib") is None:
        return "plots skipped: matplotlib is not installed (pip install matplotlib to get them)"
    # Imported by name: matplotlib is optional, so neither mypy nor the venv may know it.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    written = []
    socket = doc["parts"].get("socket", {}).get("figures", [])
    points = [
        (int(f["name"].split()[0]), f["detail"])
        for f in socket
        if f["name"].endswith("durable appends/s") and f.get("detail")
    ]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        conns = [c for c, _ in points]
        for key in ("p50_ms", "p99_ms"):
            ax.plot(conns, [d[key] for _, d in points], marker="o", label=key[:3])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("client connections")
        ax.set_ylabel("append latency, ms")
        ax.set_title("Durable append latency vs. concurrency")
        ax.legend()
        path = Path(f"{stem}-latency.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
    ready = doc["parts"].get("boot", {}).get("ready_ms", {})
    if ready:
        fig, ax = plt.subplots(figsize=(6, 4))
        for scenario, by_size in ready.items():
            sizes = sorted(int(n) for n in by_size)
            label = _BOOT_LABELS.get(scenario, scenario)
            ax.plot(sizes, [by_size[str(n)] for n in sizes], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("events in the history")
        ax.set_ylabel("time to READY, ms")
        ax.set_title("Boot time vs. history size")
        ax.legend()
        path = Path(f"{stem}-boot.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
    return "plots: " + ", ".join(written) if written else "plots: nothing to plot"
