"""The answer text the model learns to write, and a tolerant parser that reads generated answers back.

Training and evaluation must agree on one format ("Product: {title}, Category: {category}, Full Price: {price}",
the reference walkthrough's), while generated text drifts from it: currency symbols, thousands separators,
reordered or missing fields, chatter after the answer. The parser recovers every field it can and says why it
could not recover the rest, so evaluation never drops a row silently.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from phi3v_ray.errors import DataError

FIELD_ORDER = ("title", "category", "full_price")

# Label spellings we accept, longest first within a field so "Full Price" wins over "Price".
_LABEL_PATTERN = re.compile(
    r"(?<![A-Za-z])(?P<label>full[ \t]*price|price|product[ \t]*name|product|title|name|category3?(?:_code)?|category)"
    r"[ \t]*[:=]",
    re.IGNORECASE,
)
_LABEL_TO_FIELD = {
    "fullprice": "full_price",
    "price": "full_price",
    "productname": "title",
    "product": "title",
    "title": "title",
    "name": "title",
    "category": "category",
    "category3": "category",
    "category_code": "category",
    "category3_code": "category",
}
# Special tokens (<|end|>, <|assistant|>, <s>, </s>) and markdown emphasis carry no answer content.
_NOISE_PATTERN = re.compile(r"<\|[^|>]*\|>|</?s>|\*\*|__")
# A number with optional sign: grouped thousands (1,234.5 / 1.234,5 / 1 234,5 / 1'234.5) or a plain number with
# one decimal mark or an exponent. Which mark is the decimal one is decided afterwards, in `_normalise_number`.
_GROUP_SPACES = " \u00a0\u202f'\u2019"
_NUMBER_PATTERN = re.compile(
    r"(?P<sign>-)?\s*(?P<number>"
    rf"\d{{1,3}}(?:[{_GROUP_SPACES}]\d{{3}})+(?:[.,]\d+)?"
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?"
    r"|\d{1,3}(?:\.\d{3})+(?:,\d+)?"
    r"|\d+(?:[.,]\d+)?(?:[eE][-+]?\d+)?)"
)
_CURRENCY_CODES = re.compile(
    r"(?<![A-Za-z])(?:EUR|USD|GBP|CHF|JPY|CNY|SEK|NOK|DKK|PLN|CZK|HUF|AUD|CAD|HKD|SGD|KRW|INR|TRY|BRL|MXN|AED)"
    r"(?![A-Za-z])|\b(?:euros?|dollars?|pounds?|francs?)\b",
    re.IGNORECASE,
)
_SCALE_SUFFIX = re.compile(r"^\s*(k|m)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAnswer:
    """Fields recovered from one generated answer; `error` says what could not be read (None when all three were)."""

    title: str | None
    category: str | None
    full_price: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when every field was recovered."""
        return self.error is None


def _clean_field(text: str) -> str:
    """Collapse whitespace so titles from messy catalogs still round-trip through one line of answer text."""
    return " ".join(str(text).split())


def format_price(full_price: float) -> str:
    """The price as Python's float repr (2390 -> "2390.0"), exactly as the reference walkthrough writes it."""
    return repr(float(full_price))


def format_answer(title: str, category: str, full_price: float) -> str:
    """Build the training answer text for one product; raises DataError on a field the parser could not read back."""
    clean_title = _clean_field(title) if title is not None else ""
    clean_category = _clean_field(category) if category is not None else ""
    if not clean_title:
        raise DataError(f"answer: empty title (category={category!r}, full_price={full_price!r})")
    if not clean_category:
        raise DataError(f"answer: empty category for title {clean_title!r}")
    try:
        price = float(full_price)
    except (TypeError, ValueError):
        raise DataError(
            f"answer: full_price for {clean_title!r} is not a number (got {full_price!r})"
        ) from None
    if not math.isfinite(price) or price < 0:
        raise DataError(
            f"answer: full_price for {clean_title!r} must be a finite number >= 0 (got {full_price!r})"
        )
    return f"Product: {clean_title}, Category: {clean_category}, Full Price: {format_price(price)}"


def _has_currency_marker(text: str) -> bool:
    """True when a price field names its currency: a currency sign (€ $ £ ¥ ...) or a code/word (EUR, USD, euro)."""
    return any(unicodedata.category(ch) == "Sc" for ch in text) or _CURRENCY_CODES.search(text) is not None


def _normalise_number(raw: str, has_currency: bool) -> str:
    """The number as Python's float() reads it, deciding which of `,` and `.` is the decimal mark (see parse_price)."""
    if "e" in raw.lower():
        return raw.replace(",", ".")
    digits = re.sub(f"[{_GROUP_SPACES}]", "", raw)
    commas, dots = digits.count(","), digits.count(".")
    if commas and dots:  # both marks: the last one is the decimal mark (1,250.50 / 1.250,50)
        decimal, grouping = (",", ".") if digits.rfind(",") > digits.rfind(".") else (".", ",")
        return digits.replace(grouping, "").replace(decimal, ".")
    if not commas and not dots:
        return digits
    mark, count = (",", commas) if commas else (".", dots)
    if count > 1:  # 1,250,000 / 1.250.000: only thousands groups repeat
        return digits.replace(mark, "")
    if digits != raw:  # spaces or apostrophes group the thousands, so the one mark left is the decimal mark
        return digits.replace(mark, ".")
    head, tail = digits.split(mark)
    grouped = len(tail) == 3 and len(head) <= 3 and head != "0"
    if grouped and (mark == "," or has_currency):
        return head + tail
    return f"{head}.{tail}"


def parse_price(text: str) -> tuple[float | None, str | None]:
    """Read the first number in a price field; returns (price, error).

    US and European conventions are both read: "$2,390.00", "2390.00", "USD 2390" and "2.390,00 €", "1 250,50 €",
    "1'250.50", "1.250.000" all give the amounts a person would read; "1.2k" and "3M" are scaled. When both `,` and
    `.` appear, the last one is the decimal mark; spaces, no-break spaces and apostrophes only ever group thousands.
    A lone mark is the ambiguous case, read as:
    - a comma followed by exactly three digits after one to three digits ("2,390", "12,500") groups thousands
      (the US reading); any other lone comma is a decimal comma ("2390,5", "12,50", "0,500");
    - a dot followed by exactly three digits after one to three digits ("2.390") groups thousands only when the
      field names a currency ("2.390 €", "EUR 2.390"); without one it is a decimal point (2.39), as Python's float
      repr writes it; any other lone dot is a decimal point ("2390.00", "2.39").
    """
    match = _NUMBER_PATTERN.search(text)
    if match is None:
        return None, f"no number in price field {text.strip()[:40]!r}"
    raw = match.group("number")
    normalised = _normalise_number(raw, _has_currency_marker(text))
    try:
        value = float(normalised)
    except ValueError:
        return None, f"unreadable price {raw!r}"
    scale = _SCALE_SUFFIX.match(text[match.end() :])
    if scale:
        value *= 1_000 if scale.group(1).lower() == "k" else 1_000_000
    if match.group("sign"):
        return None, f"negative price {match.group(0).strip()!r}"
    if not math.isfinite(value):
        return None, f"price {raw!r} is not finite"
    return value, None


def _labelled_fields(text: str) -> dict[str, str]:
    """Map field -> raw value for every labelled field; a value runs to the next label or the end of its line."""
    matches = list(_LABEL_PATTERN.finditer(text))
    fields: dict[str, str] = {}
    for index, match in enumerate(matches):
        field = _LABEL_TO_FIELD[re.sub(r"[ \t]+", "", match.group("label").lower())]
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        value = text[match.end() : end].split("\n", 1)[0]
        if field not in fields:  # a model that repeats itself: its first answer counts
            fields[field] = value
    return fields


def _unlabelled_fields(text: str) -> dict[str, str]:
    """Positional fallback for "title, category, price" with the labels left out."""
    line = next((part for part in text.split("\n") if part.strip()), "")
    parts = [part.strip() for part in line.split(",")]
    if len(parts) < 3 or _NUMBER_PATTERN.search(parts[-1]) is None:
        return {}
    return {"title": ", ".join(parts[:-2]), "category": parts[-2], "full_price": parts[-1]}


def _strip_value(value: str) -> str:
    """Drop separators and quotes the model puts around a field value."""
    return value.strip().strip(",;|").strip().strip("\"'`").strip()


def parse_answer(text: str) -> ParsedAnswer:
    """Recover title, category and price from generated text; fields it cannot read are None and named in `error`."""
    if text is None or not str(text).strip():
        return ParsedAnswer(None, None, None, "empty answer")
    cleaned = _NOISE_PATTERN.sub(" ", str(text)).replace("\r", "")
    raw_fields = _labelled_fields(cleaned) or _unlabelled_fields(cleaned)
    if not raw_fields:
        snippet = " ".join(cleaned.split())[:60]
        return ParsedAnswer(None, None, None, f"no Product/Category/Full Price fields in {snippet!r}")

    problems: list[str] = []
    title = _clean_field(_strip_value(raw_fields.get("title", ""))) or None
    category = _clean_field(_strip_value(raw_fields.get("category", ""))) or None
    full_price: float | None = None
    if title is None:
        problems.append("missing title" if "title" not in raw_fields else "empty title")
    if category is None:
        problems.append("missing category" if "category" not in raw_fields else "empty category")
    if "full_price" not in raw_fields:
        problems.append("missing price")
    else:
        full_price, price_error = parse_price(raw_fields["full_price"])
        if price_error:
            problems.append(price_error)
    return ParsedAnswer(title, category, full_price, "; ".join(problems) or None)
