"""One product-code rule for catalog validation and for the preparation pipeline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from phi3v_ray.data.examples import REASON_BAD_PRODUCT_CODE, prepare_row
from phi3v_ray.data.schema import BURBERRY_COLUMNS, parse_product_code, status_kind, validate_catalog


@pytest.mark.parametrize("value", [12, 12.0, "12", "12.0", " 12 ", "12.00", np.int64(12), np.float32(12.0)])
def test_a_whole_number_in_any_column_type_reads_as_that_code(value: object) -> None:
    assert parse_product_code(value) == (12, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (12.5, "product_code 12.5 has a fractional part, expected a whole number"),
        ("12.5", "product_code '12.5' has a fractional part, expected a whole number"),
        (-3, "product_code -3 is negative, expected a whole number"),
        ("-3", "product_code '-3' is negative, expected a whole number"),
        (float("nan"), "product_code is empty, expected a whole number"),
        (None, "product_code is empty, expected a whole number"),
        ("  ", "product_code is empty, expected a whole number"),
        (True, "product_code True is a boolean, expected a whole number"),
        ("../../etc/passwd", "product_code '../../etc/passwd' is not a whole number"),
        (float("inf"), "product_code inf is not a finite number, expected a whole number"),
        (2.0**60, "too large to be exact as a float"),
        (2**64, "does not fit in 64 bits"),
    ],
)
def test_anything_but_a_whole_number_is_refused_with_a_reason_naming_it(value: object, reason: str) -> None:
    code, problem = parse_product_code(value)
    assert code is None
    assert problem is not None and reason in problem


def _catalog(codes: list[object]) -> pd.DataFrame:
    rows = []
    for index, code in enumerate(codes):
        row = {name: "x" for name in BURBERRY_COLUMNS}
        row.update(
            product_code=code,
            title=f"Product {index}",
            imageurl=f"https://example.com/{index}.jpg",
            full_price=100.0,
            price=100.0,
            full_price_eur=90.0,
            price_eur=90.0,
            flg_discount=0,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def test_validation_accepts_integral_floats_from_a_float_typed_column_and_refuses_fractions() -> None:
    catalog = _catalog([12.0, 13.5, 14.0])
    assert catalog["product_code"].dtype == np.float64  # what pandas makes of a CSV column with a gap or a .0
    ok, rejects = validate_catalog(catalog)
    assert ok["product_code"].tolist() == [12, 14]
    assert rejects["status"].tolist() == [
        "bad_product_code: product_code 13.5 has a fractional part, expected a whole number"
    ]
    assert status_kind(rejects["status"].iloc[0]) == "bad_product_code"


def test_validation_reads_text_codes_with_a_zero_fraction_and_finds_their_duplicates() -> None:
    ok, rejects = validate_catalog(_catalog(["12.0", "12", "x12"]))
    assert ok["product_code"].tolist() == [12]
    assert rejects["status"].tolist() == [
        "duplicate_product_code: product_code 12 already used by row 0",
        "bad_product_code: product_code 'x12' is not a whole number",
    ]


_NO_PROCESSOR = SimpleNamespace(num_crops=1, crop_size=336)


def _pipeline_row(code: object) -> dict:
    return {
        "row_id": 7,
        "product_code": code,
        "status": "ok",
        "local_image_path": "/nonexistent/image.jpg",
        "title": "Lola Bag",
        "category3_code": "BAGS",
        "full_price": 10.0,
    }


@pytest.mark.parametrize("code", [12.0, "12.0", 12, "12"])
def test_the_pipeline_accepts_the_codes_validation_accepts(code: object) -> None:
    example, reject = prepare_row(_pipeline_row(code), _NO_PROCESSOR, prompt_only=True)
    # the image is missing, so the row is rejected later, for its image, carrying the parsed code
    assert example is None and reject is not None
    assert reject["reason"] != REASON_BAD_PRODUCT_CODE
    assert reject["product_code"] == 12


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (12.5, "product_code 12.5 has a fractional part, expected a whole number"),
        ("12.5", "product_code '12.5' has a fractional part, expected a whole number"),
        ("-4", "product_code '-4' is negative, expected a whole number"),
        (True, "product_code True is a boolean, expected a whole number"),
    ],
)
def test_the_pipeline_refuses_the_codes_validation_refuses_with_the_same_reason(
    code: object, detail: str
) -> None:
    _, reject = prepare_row(_pipeline_row(code), _NO_PROCESSOR, prompt_only=True)
    assert reject is not None
    assert (reject["reason"], reject["detail"], reject["product_code"]) == (
        REASON_BAD_PRODUCT_CODE,
        detail,
        None,
    )
    assert parse_product_code(code)[1] == detail
