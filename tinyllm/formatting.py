"""How numbers are shown to people, in one place: tables (cards, reports), sizes, durations and the progress clock."""

from __future__ import annotations

__all__ = ["fmt_value", "fmt_bytes", "fmt_duration", "fmt_clock"]


def fmt_value(v) -> str:
    """A value as people read it in tables: 4 significant digits for floats, thousands separators for large counts,
    an empty cell for a missing value."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 10_000:
        return f"{v:,}"
    return str(v)


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KB' (binary units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def fmt_duration(seconds: float) -> str:
    """An estimate: '45 s', '2.5 min', '1.2 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_clock(seconds: float) -> str:
    """Elapsed time and ETA on a progress line: '4:05', '1:02:03'."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
