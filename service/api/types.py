"""Field types shared by the request bodies, so a rule like "what an organisation id
may look like" is written once."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.openapi.spec import Example
from litestar.params import PathParameter, QueryParameter

from service.core.sales import SETL_ID_MEANS, SETL_ID_SHAPE

# Patterns end in END, not a bare "$": Python's "$" (msgspec checks patterns with re)
# also matches before a final newline, so "P1\n" was taken for "P1" in bodies while the
# same id was refused in paths. In the OpenAPI document it still reads as the end.
END = r"$(?!\n)"
# An organisation id as registered; bodies naming one (events, settlements, keys) use
# the same type, so a malformed id is a 400 naming the field everywhere.
OrgId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+" + END)]
# A settlement id (core.sales.SETL_ID_SHAPE); it names a resource in URL paths
# (/v1/settlements/{setl_id}).
SETL_ID_PATTERN = "^" + SETL_ID_SHAPE + END
SetlId = Annotated[str, msgspec.Meta(pattern=SETL_ID_PATTERN)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
RawCode = Annotated[str, msgspec.Meta(max_length=200)]  # judged per code, not per request
# a product as registered: 7 digits (CN20) or a GTIN-14 (the handler checks which)
ProductId = Annotated[str, msgspec.Meta(min_length=7, max_length=14)]
# An institution's code on the national medical-insurance platform (定点医药机构编码,
# str 30 in the NHSA envelope), e.g. "P45010300001".
FixmedinsCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{1,30}" + END)]
Region = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}" + END)]
RegionPrefix = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,6}" + END)]
# A GS1 Global Location Number: 13 digits (the check digit is checked by the handler).
Gln = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{13}" + END)]

# What each pattern above means, as a 400 says it: msgspec's own message shows the
# regex, with the END guard in it (found by a probe: "matching regex '…$(?!\n)'")
PATTERN_MEANS = {
    r"^[A-Za-z0-9_.:-]+" + END: "letters, digits, '_', '.', ':' or '-'",
    SETL_ID_PATTERN: SETL_ID_MEANS,
    r"^[A-Za-z0-9]{1,30}" + END: "1 to 30 letters or digits",
    r"^[0-9]{6}" + END: "6 digits",
    r"^[0-9]{1,6}" + END: "1 to 6 digits",
    r"^[0-9]{13}" + END: "13 digits",
}

# Examples for the OpenAPI document: a request built from them gets past validation into
# the rules (the README's first session), so generated requests (schemathesis) do too.
# They say more about a field without changing what it accepts.
EXAMPLE_CODE = "81234560000000000011"
EXAMPLE_TIME = "2026-03-02T08:00:00+08:00"
ExampleCodes = msgspec.Meta(examples=[[EXAMPLE_CODE]])
# path parameters with the same examples (documentation only: the handler judges them)
CodeInPath = Annotated[str, PathParameter(examples=[Example(value=EXAMPLE_CODE)])]
SetlIdInPath = Annotated[str, PathParameter(examples=[Example(value="S0001")])]
OrgInQuery = Annotated[str | None, QueryParameter(max_length=64, examples=[Example(value="P1")])]
