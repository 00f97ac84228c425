"""Comma-separated lists in flags and settings ("a, b,c" -> ["a", "b", "c"])."""


def split_list(value: str | None) -> list[str]:
    """The non-empty, stripped items of a comma-separated string; None or "" gives []."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]
