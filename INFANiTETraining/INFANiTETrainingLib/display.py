"""Text shown by the Training module (no Qt): the progress bar's format."""
from __future__ import annotations


def format_duration(seconds) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min`` (rounded to the second); ``""`` for None or a negative value."""
    if seconds is None:
        return ""
    total = int(round(float(seconds)))
    if total < 0:
        return ""
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(event: dict) -> str:
    """The progress bar's text for one ``train`` progress event: ``step 12/40 · loss 0.1234 · ETA 1 min 05 s``.

    The ETA is ``…`` until the run has timed a step (``eta_s`` null); no ETA once the last step is reached.  The
    text holds no ``%`` (``QProgressBar.format`` replaces ``%p``, ``%v``, ``%m``)."""
    step, total = int(event.get("step") or 0), int(event.get("total") or 0)
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    if event.get("loss") is not None:
        parts.append(f"loss {float(event['loss']):.4g}")
    if total and step < total:
        eta = format_duration(event.get("eta_s"))
        parts.append(f"ETA {eta or '…'}")
    return " · ".join(parts).replace("%", "")


__all__ = ["format_duration", "progress_text"]
