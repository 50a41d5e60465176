"""EPCIS identifiers → canonical codes and GLNs, including the standard's examples."""

from __future__ import annotations

import pytest
from biip import gs1_digital_link_uris

from service.interop.epcis.identifiers import _QUALIFIERS, pattern_product, to_code, to_gln, to_location


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        # Example_9.6.1-ObjectEvent: company prefix 0614141, indicator 1 + item 07346
        ("urn:epc:id:sgtin:0614141.107346.2017", "0110614141073464212017"),
        ("urn:epc:id:sgtin:0614141.107346.2018", "0110614141073464212018"),
        # aggregation_event_all_possible_fields: a 9-digit company prefix
        ("urn:epc:id:sgtin:9520001.012346.10000001001", "0109520001123467211000000100" + "1"),
        ("urn:epc:id:sgtin:4012345.033333.AGHFG", "01040123453333362" + "1AGHFG"),
        # a %-escaped serial
        ("urn:epc:id:sgtin:4012345.011111.A%2Fb", "010401234511111821A/b"),
        ("urn:epc:id:sscc:0614141.1234567890", "00106141412345678908"),
        # Digital Link (Example_9.6.1-ObjectEventWithDigitalLink)
        ("https://id.gs1.org/01/70614141123451/21/2017", "0170614141123451212017"),
        ("https://example.com/00/106141412345678908", "00106141412345678908"),
        # data attributes in the query string (GS1's own examples), a lot in the path
        ("https://id.gs1.org/01/70614141123451/21/2017?17=301231", "0170614141123451212017"),
        ("https://id.gs1.org/00/106141412345678908?02=00614141123452&37=25&10=AB1", "00106141412345678908"),
        ("https://id.gs1.org/01/70614141123451/10/L1/21/2017", "0170614141123451212017"),
        # the forms /v1/events takes are taken too
        ("81234560000000000011", "81234560000000000011"),
        ("(01)10614141073464(21)2017", "0110614141073464212017"),
    ],
)
def test_codes(uri: str, code: str) -> None:
    assert to_code(uri) == code


@pytest.mark.parametrize(
    "uri",
    [
        "urn:epc:class:lgtin:0614141.077777.987",  # a class, not one pack
        "urn:epc:id:giai:4000001.111",
        "urn:epc:id:sgtin:0614141.107346",  # no serial
        "urn:epc:id:sgtin:0614141.107346.%zz",
        "urn:epc:id:sscc:0614141.12345",
        "https://id.gs1.org/01/04012345987652",  # a GTIN without serial
        "https://id.gs1.org/01/04012345987653/21/1",  # bad check digit
        "urn:epc:id:sgln:0614141.07346.1234",
        # the query string names a key or a qualifier of the path's key: the path alone is
        # the identity, and a link naming another in its query names none we can trust
        "https://id.gs1.org/01/10614141073464/21/XYZ?21=0042",
        "https://id.gs1.org/01/10614141073464/21/XYZ?%32%31=0042",
        "https://id.gs1.org/01/10614141073464/21/XYZ?ser=0042",
        "https://id.gs1.org/01/10614141073464/21/XYZ?00=106141412345678908",
        "https://id.gs1.org/01/10614141073464/21/XYZ?10=L1",
        "https://id.gs1.org/01/10614141073464?21=42",
        "https://id.gs1.org/00/106141412345678908?01=10614141073464&21=1",
        "https://id.gs1.org/414/0614141073467?01=10614141073464&21=Ab1",
        "https://id.gs1.org/8004/0614141ABC?01=10614141073464&21=Ab1",
        # paths of other keys, or of what a pack's code does not say
        "https://id.gs1.org/414/0614141073467",
        "https://id.gs1.org/01/10614141073464/22/V1/21/1",
        "https://id.gs1.org/01/10614141073464/21/1/235/X",
        "junk",
        "urn:epc:id:sgtin:" + "1" * 400,
    ],
)
def test_not_codes(uri: str) -> None:
    assert to_code(uri) is None


@pytest.mark.parametrize(
    ("uri", "gln"),
    [
        ("urn:epc:id:sgln:0614141.07346.1234", "0614141073467"),
        ("urn:epc:id:sgln:0614141.07346.0", "0614141073467"),
        ("urn:epc:id:sgln:0012345.11111.400", "0012345111112"),
        ("urn:epc:id:sgln:952005385.011.scA", "9520053850113"),
        ("urn:epc:id:pgln:0614141.07346", "0614141073467"),
        ("https://id.gs1.org/414/0614141073467/254/1234", "0614141073467"),
        ("https://id.gs1.org/417/0614141073467", "0614141073467"),
    ],
)
def test_glns(uri: str, gln: str) -> None:
    assert to_gln(uri) == gln


@pytest.mark.parametrize(
    "uri",
    ["urn:epc:id:sgln:0614141.07346", "urn:epc:id:sgtin:0614141.107346.2017", "junk", "https://x.org/414/1"],
)
def test_not_glns(uri: str) -> None:
    assert to_gln(uri) is None


def test_the_keys_and_qualifiers_named_are_biips() -> None:
    """The table of Digital Link keys and their qualifiers is biip's, which is private."""
    table = getattr(gs1_digital_link_uris, "_PRIMARY_IDENTIFIER_MAP", None)
    if table is None:
        pytest.skip("this biip has no table of Digital Link keys")
    theirs = {key: {q.ai.ai for q in pi.qualifiers} for key, pi in table.items()}
    assert theirs == {key: set(qualifiers) for key, qualifiers in _QUALIFIERS.items()}


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        ("urn:epc:id:sgln:0614141.07346.0", "4140614141073467"),  # extension 0: none (TDS)
        ("https://id.gs1.org/414/0614141073467", "4140614141073467"),
        ("0614141073467", "4140614141073467"),
        ("urn:epc:id:sgln:0614141.07346.1234", "4140614141073467" + "2541234"),
        ("https://example.com/414/0614141073467/254/1234", "4140614141073467" + "2541234"),
        ("urn:epc:id:sgln:0614141.07346", None),
        ("0614141073468", None),  # check digit
        ("https://id.gs1.org/01/10614141073464/21/1", None),
        ("https://example.com/414/0614141073467?254=1234", None),  # a qualifier in the query
        ("https://example.com/414/0614141073467?17=301231", "4140614141073467"),
        ("junk", None),
    ],
)
def test_locations(uri: str, location: str | None) -> None:
    assert to_location(uri) == location


@pytest.mark.parametrize(
    ("uri", "gtin"),
    [
        ("urn:epc:idpat:sgtin:0614141.107346.*", "10614141073464"),
        ("urn:epc:idpat:sgtin:0614141.*.*", None),  # a company's: not one product
        ("urn:epc:idpat:sscc:0614141.*", None),
        ("urn:epc:idpat:sgtin:0614141.107346.5", None),  # no pattern
        ("urn:epc:id:sgtin:0614141.107346.5", None),
    ],
)
def test_patterns_of_one_product(uri: str, gtin: str | None) -> None:
    assert pattern_product(uri) == gtin
