"""Field types shared by the request bodies, so a rule like "what an organisation id
may look like" is written once."""

from __future__ import annotations

from typing import Annotated

import msgspec

# An organisation id as registered; bodies naming one (events, settlements, keys) use
# the same type, so a malformed id is a 400 naming the field everywhere.
OrgId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
RawCode = Annotated[str, msgspec.Meta(max_length=200)]  # judged per code, not per request
Region = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")]
RegionPrefix = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,6}$")]
