"""The catalog columns (the Burberry product-price schema) and row validation before anything is downloaded.

Every stage (synth, fetch, split, prepare) reads and writes these columns with the real dataset's dtypes, so a
synthetic catalog and `DBQ/Burberry.Product.prices.United.States` are interchangeable. Validation never drops a row:
each input row comes back either in `ok` or in `rejects` with a `status` that names the column, what was found
and what was expected.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from phi3v_ray.errors import DataError

# name -> arrow type name, in the real dataset's column order (see shared/reference/field-notes.md).
BURBERRY_COLUMNS: dict[str, str] = {
    "website_name": "string",
    "competence_date": "string",
    "country_code": "string",
    "currency_code": "string",
    "brand": "string",
    "category1_code": "string",
    "category2_code": "string",
    "category3_code": "string",
    "product_code": "int64",
    "title": "string",
    "itemurl": "string",
    "imageurl": "string",
    "full_price": "double",
    "price": "double",
    "full_price_eur": "double",
    "price_eur": "double",
    "flg_discount": "int64",
}

STATUS_OK = "ok"
# Columns every stage adds after the 17 catalog columns.
MANIFEST_EXTRA_COLUMNS: tuple[str, ...] = ("status", "local_image_path")

_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64()}


def burberry_arrow_schema() -> pa.Schema:
    """The real dataset's parquet schema for the 17 catalog columns (strings, int64 codes, float64 prices)."""
    return pa.schema([pa.field(name, _ARROW_TYPES[kind]) for name, kind in BURBERRY_COLUMNS.items()])


def manifest_arrow_schema(extra_input_columns: Iterable[str] = ()) -> pa.Schema:
    """The manifest schema: the 17 columns, any extra input columns (as strings), `status`, `local_image_path`."""
    fields = list(burberry_arrow_schema())
    fields += [pa.field(name, pa.string()) for name in extra_input_columns]
    fields += [pa.field("status", pa.string()), pa.field("local_image_path", pa.string())]
    return pa.schema(fields)


def require_columns(df: pd.DataFrame, source: str) -> None:
    """Fail with every missing column named at once, so the user fixes the file in one go."""
    missing = [name for name in BURBERRY_COLUMNS if name not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; expected the 17 Burberry columns "
            f"({', '.join(BURBERRY_COLUMNS)})"
        )


_INT64_MAX = 2**63 - 1
_EXACT_FLOAT_MAX = 2**53  # beyond this a float no longer holds every whole number exactly
_WHOLE_NUMBER_TEXT = re.compile(r"\+?(\d+)(?:\.0*)?")


def parse_product_code(value: object) -> tuple[int | None, str | None]:
    """The one product-code rule, used by validation and by the preparation pipeline: (code, None) or (None, why).

    A product code is a whole number from 0 to 2**63-1, given as an int, an integral float or its text: 12, 12.0,
    "12" and "12.0" (what a float-typed CSV or parquet column holds) all read as 12. Everything else is refused
    with a reason naming the value: a fraction (12.5, "12.5"), a sign (-12), NaN/inf, an empty cell, a boolean,
    any other text, and floats above 2**53, which cannot hold every whole number exactly.
    """
    shown = repr(value[:30]) if isinstance(value, str) else str(value)[:30]
    if is_missing(value) or (isinstance(value, str) and not value.strip()):
        return None, "product_code is empty, expected a whole number"
    if isinstance(value, bool):
        return None, f"product_code {shown} is a boolean, expected a whole number"
    if isinstance(value, numbers.Integral):
        code = int(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            return None, f"product_code {shown} is not a finite number, expected a whole number"
        if not number.is_integer():
            return None, f"product_code {shown} has a fractional part, expected a whole number"
        if abs(number) > _EXACT_FLOAT_MAX:
            return (
                None,
                f"product_code {shown} is too large to be exact as a float; store codes as integers or text",
            )
        code = int(number)
    else:
        text = str(value).strip()
        match = _WHOLE_NUMBER_TEXT.fullmatch(text)
        if match is None:
            if re.fullmatch(r"[-+]?\d*\.\d+", text):
                reason = "is negative" if text.startswith("-") else "has a fractional part"
                return None, f"product_code {shown} {reason}, expected a whole number"
            if re.fullmatch(r"-\d+", text):
                return None, f"product_code {shown} is negative, expected a whole number"
            return None, f"product_code {shown} is not a whole number"
        code = int(match.group(1))
    if code < 0:
        return None, f"product_code {shown} is negative, expected a whole number"
    if code > _INT64_MAX:
        return None, f"product_code {shown} does not fit in 64 bits"
    return code, None


def _to_int(value: object) -> int | None:
    """A whole number by the product-code rule, or None (the row is then rejected with the rule's reason)."""
    return parse_product_code(value)[0]


def _to_float(value: object) -> float | None:
    """A finite price, or None when the value is missing, text or NaN/inf."""
    if is_missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def is_missing(value: object) -> bool:
    """True for an empty cell: None, pd.NA, pd.NaT, a float/numpy NaN or a numpy NaT.

    The one "is this value missing?" rule for every stage. Readers disagree on what an empty cell becomes (CSV gives
    NaN, a parquet round trip of a string column gives pd.NA, object columns keep None), so each check must accept
    all of them; text (even blank) and other values are present, and blank text is each caller's own rule.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    return False


def _is_blank(value: object) -> bool:
    return is_missing(value) or str(value).strip() == ""


def _row_problem(row: dict, seen_codes: dict[int, int], position: int) -> str | None:
    """The first reason this row cannot be fetched/trained on, as `kind: detail`; None when the row is usable."""
    url = row["imageurl"]
    if _is_blank(url):
        return "missing_url: imageurl is empty, expected an http(s) URL"
    url_text = str(url).strip()
    if not url_text.lower().startswith(("http://", "https://")) or len(url_text) < 12:
        return f"bad_url: imageurl {url_text[:60]!r} is not an http(s) URL"
    if _is_blank(row["title"]):
        return "empty_title: title is empty, expected the product name"
    if _to_float(row["full_price"]) is None:
        return f"bad_price: full_price {str(row['full_price'])[:30]!r} is not a finite number"
    code, code_problem = parse_product_code(row["product_code"])
    if code is None:
        return f"bad_product_code: {code_problem}"
    if code in seen_codes:
        return f"duplicate_product_code: product_code {code} already used by row {seen_codes[code]}"
    seen_codes[code] = position
    return None


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Cast the 17 columns to the schema dtypes; values that do not fit become null (their row is rejected)."""
    out = pd.DataFrame(index=df.index)
    for name, kind in BURBERRY_COLUMNS.items():
        values = df[name].tolist()
        if kind == "string":
            out[name] = pd.array([None if is_missing(v) else str(v) for v in values], dtype="string")
        elif kind == "int64":
            out[name] = pd.array([_to_int(v) for v in values], dtype="Int64")
        else:
            out[name] = pd.array([_to_float(v) for v in values], dtype="Float64")
    for name in df.columns:
        if name not in BURBERRY_COLUMNS and name not in MANIFEST_EXTRA_COLUMNS:
            out[name] = pd.array(
                [None if is_missing(v) else str(v) for v in df[name].tolist()], dtype="string"
            )
    return out


def validate_catalog(df: pd.DataFrame, source: str = "catalog") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a catalog into usable rows and rejected rows (each with a `status` reason); nothing is dropped.

    Both frames keep the input's row order and index (the input row number), the 17 columns cast to the schema
    dtypes, and any extra input columns as strings. Missing columns are a `DataError` naming all of them.
    """
    require_columns(df, source)
    frame = _coerce(df.reset_index(drop=True))
    raw = df.reset_index(drop=True)
    seen_codes: dict[int, int] = {}
    statuses = [
        _row_problem(row, seen_codes, position) or STATUS_OK
        for position, row in enumerate(raw[list(BURBERRY_COLUMNS)].to_dict("records"))
    ]
    frame["status"] = pd.array(statuses, dtype="string")
    is_ok = frame["status"] == STATUS_OK
    return frame[is_ok].copy(), frame[~is_ok].copy()


def status_kind(status: str) -> str:
    """The outcome group of a status (`ok`, `http_error`, `timeout`, ...), for summaries."""
    return status.split(":", 1)[0]
