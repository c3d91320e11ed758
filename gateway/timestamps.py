"""Timestamps are stored as ISO-8601 UTC text with milliseconds and `Z`, Chainlit's column type."""

from datetime import UTC, datetime


def format_timestamp(moment: datetime) -> str:
    """`2026-11-22T05:17:33.123Z`: fixed width, so text order is time order."""
    if moment.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now() -> str:
    return format_timestamp(datetime.now(UTC))


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries an offset (`Z` or `+hh:mm`); naive ones are refused,
    because guessing their zone is how local time ends up labelled UTC."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        raise ValueError("timestamp has no UTC offset; add 'Z' or '+00:00'")
    return moment.astimezone(UTC)


def normalize_timestamp(text: str) -> str:
    return format_timestamp(parse_timestamp(text))


def display_timestamp(stored: str | None) -> str | None:
    """A stored timestamp in the canonical form. Rows written by Chainlit may carry microseconds
    or no zone (Chainlit writes UTC); text that is no timestamp at all is returned as it is."""
    if stored is None:
        return None
    try:
        moment = datetime.fromisoformat(stored.strip())
    except ValueError:
        return stored
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_timestamp(moment)
