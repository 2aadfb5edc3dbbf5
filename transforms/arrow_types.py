"""Which Arrow types hold text: the one definition both Beam stages check columns with.

Preprocess and score accept the same string types for a text column; preprocess also accepts
binary columns (their bytes are checked as UTF-8 row by row, bad rows dead-lettered) and an
all-null column (every row dead-lettered), since it reads CSV/JSONL/Parquet of any origin.
"""

from __future__ import annotations

import pyarrow as pa


def is_text_type(arrow_type: pa.DataType) -> bool:
    """True for the Arrow types whose values are strings (plain, large, view or dictionary)."""
    if pa.types.is_dictionary(arrow_type):
        return is_text_type(arrow_type.value_type)
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    )


def is_text_or_bytes_type(arrow_type: pa.DataType) -> bool:
    """`is_text_type`, or bytes to be checked as UTF-8 row by row, or a column of nulls only."""
    if pa.types.is_dictionary(arrow_type):
        return is_text_or_bytes_type(arrow_type.value_type)
    return (
        is_text_type(arrow_type)
        or pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or pa.types.is_null(arrow_type)
    )
