"""The shared field types of request bodies (service.api.types): a value is taken whole
or refused, as in URL paths."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.api.types import FixmedinsCode, Gln, OrgId, Region, RegionPrefix, SetlId


@pytest.mark.parametrize(
    ("kind", "good"),
    [
        (OrgId, "P1"),
        (SetlId, "S-0001"),
        (FixmedinsCode, "P45010300001"),
        (Region, "450103"),
        (RegionPrefix, "45"),
        (Gln, "6901234000017"),
    ],
)
def test_a_trailing_newline_is_refused(kind: Any, good: str) -> None:
    assert msgspec.convert(good, kind) == good
    for bad in (good + "\n", good + "\r\n", "\n" + good, good + " "):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, kind)
