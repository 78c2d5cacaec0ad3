"""Turn SimpleITK/ITK exception text into one line a user can read."""

from __future__ import annotations

import re


def first_line(e: Exception) -> str:
    """The useful part of a SimpleITK/ITK error message (no source locations, prefixes or repeated paths)."""
    # "Reason:" lines repeat a stale errno ("No such file or directory" for a truncated file): drop them.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Reason:")]
    # ITK messages start with a file:line prefix; the description is the most useful line.
    text = next((ln.split("Description:", 1)[1].strip() for ln in lines if "Description:" in ln),
                lines[-1] if lines else type(e).__name__)
    text = re.sub(r"^(s?itk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):)?", "", text).strip()
    if "Unable to determine ImageIO reader" in text:
        return "the contents are not in any image format SimpleITK knows"
    return text
