"""Search dimensions and their bounds (filled by the search issue)."""
