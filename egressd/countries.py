"""ISO 3166-1 alpha-2 country codes: what destination labels and ``expected_countries`` use.

The 249 officially assigned codes (ISO 3166-1 as of 2024). The geo data labels destinations
with these; ``ZZ`` is egressd's "country not known", never a country one can expect.
"""

from __future__ import annotations

_CODES = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
    BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
    DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
    GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
    KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
    MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
    PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
    SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
    US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_3166_ALPHA2 = frozenset(_CODES.split())

#: codes people write for a country whose ISO code differs
SUGGESTIONS = {"UK": "GB", "EL": "GR"}

#: codes that look like countries and are not, with why
NOT_COUNTRIES = {
    "EU": "the European Union is not a country: list its member countries",
    "ZZ": "ZZ labels destinations whose country is not known; it is not a country",
    "XK": "XK (Kosovo) is a user-assigned code, not ISO 3166-1",
    "AP": "AP (Asia/Pacific) is a registry region, not a country",
}


def country_problem(code: str) -> str | None:
    """Why ``code`` (upper case) is not an ISO 3166-1 alpha-2 country code; None when it is."""
    if code in ISO_3166_ALPHA2:
        return None
    if code in SUGGESTIONS:
        return f"{code} is not an ISO 3166-1 alpha-2 code: use {SUGGESTIONS[code]}"
    if code in NOT_COUNTRIES:
        return NOT_COUNTRIES[code]
    return f"{code!r} is not an ISO 3166-1 alpha-2 country code"
