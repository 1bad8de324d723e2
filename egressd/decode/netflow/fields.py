"""Information Element ids egressd reads from NetFlow v9 / IPFIX records, and what each means.

Templates are compiled against these tables once, so the per-record path never looks an id up.
"""

from __future__ import annotations

from typing import Final

# Canonical slots: every compiled template yields rows in this order (see templates.py).
SRC4: Final = 0
SRC6: Final = 1
DST4: Final = 2
DST6: Final = 3
BYTES: Final = 4
PACKETS: Final = 5
PROTO: Final = 6
SRC_PORT: Final = 7
DST_PORT: Final = 8
START: Final = 9
END: Final = 10
OWN_RATE: Final = 11
SAMPLER_ID: Final = 12
FRAME: Final = 13
FRAME_SIZE: Final = 14
SLOT_COUNT: Final = 15

# Slots that hold integers (the others hold raw bytes).
INT_SLOTS: Final = frozenset(
    {BYTES, PACKETS, PROTO, SRC_PORT, DST_PORT, START, END, OWN_RATE, SAMPLER_ID, FRAME_SIZE}
)

# Address elements: (slot, expected length).
ADDRESS_FIELDS: Final[dict[int, tuple[int, int]]] = {
    8: (SRC4, 4),  # sourceIPv4Address / IPV4_SRC_ADDR
    12: (DST4, 4),  # destinationIPv4Address / IPV4_DST_ADDR
    27: (SRC6, 16),  # sourceIPv6Address / IPV6_SRC_ADDR
    28: (DST6, 16),  # destinationIPv6Address / IPV6_DST_ADDR
}

# Integer elements per slot, best first: a template uses the first one it carries.
# Delta counters beat totals; NSEL (Cisco ASA) reports initiator/responder counters only,
# and the initiator side is the one sent by the flow's source.
INT_FIELDS: Final[dict[int, tuple[int, ...]]] = {
    BYTES: (1, 85, 231, 23, 232),
    PACKETS: (2, 86, 298, 24, 299),
    PROTO: (4,),
    SRC_PORT: (7, 182, 180),
    DST_PORT: (11, 183, 181),
    OWN_RATE: (34, 50),  # SAMPLING_INTERVAL, FLOW_SAMPLER_RANDOM_INTERVAL / samplerRandomInterval
    SAMPLER_ID: (48, 302),  # FLOW_SAMPLER_ID / samplerId, selectorId
    FRAME_SIZE: (312,),  # dataLinkFrameSize
}

FRAME_SECTION: Final = 315  # dataLinkFrameSection: the sampled packet's first bytes

# Time elements, best first per slot, with how to read them.
TIME_UPTIME_MS: Final = 1  # v9 FIRST/LAST_SWITCHED, IPFIX flowStart/EndSysUpTime
TIME_SECONDS: Final = 2  # flowStart/EndSeconds
TIME_MILLIS: Final = 3  # flowStart/EndMilliseconds
TIME_NTP: Final = 4  # flowStart/EndMicroseconds and Nanoseconds (NTP 64-bit format)
TIME_DELTA_US: Final = 5  # flowStart/EndDeltaMicroseconds, before the export time

START_FIELDS: Final[tuple[tuple[int, int], ...]] = (
    (152, TIME_MILLIS),
    (150, TIME_SECONDS),
    (154, TIME_NTP),
    (156, TIME_NTP),
    (158, TIME_DELTA_US),
    (22, TIME_UPTIME_MS),
)
END_FIELDS: Final[tuple[tuple[int, int], ...]] = (
    (153, TIME_MILLIS),
    (151, TIME_SECONDS),
    (155, TIME_NTP),
    (157, TIME_NTP),
    (159, TIME_DELTA_US),
    (21, TIME_UPTIME_MS),
    (323, TIME_MILLIS),  # observationTimeMilliseconds: NSEL event time when no end is given
    (322, TIME_SECONDS),  # observationTimeSeconds
)

# Options-record elements that describe the exporter rather than a flow.
OPT_SAMPLING_INTERVAL: Final = 34
OPT_SAMPLER_RANDOM_INTERVAL: Final = 50
OPT_SAMPLER_ID: Final = 48
OPT_SELECTOR_ID: Final = 302
OPT_PACKET_INTERVAL: Final = 305  # samplingPacketInterval: packets taken in a row
OPT_PACKET_SPACE: Final = 306  # samplingPacketSpace: packets skipped after them
OPT_SAMPLING_SIZE: Final = 309  # samplingSize: packets taken ...
OPT_SAMPLING_POPULATION: Final = 310  # ... out of samplingPopulation
OPT_SYSTEM_INIT_MS: Final = 160  # systemInitTimeMilliseconds: epoch of sysUpTime fields
OPTION_FIELDS: Final = frozenset(
    {
        OPT_SAMPLING_INTERVAL,
        OPT_SAMPLER_RANDOM_INTERVAL,
        OPT_SAMPLER_ID,
        OPT_SELECTOR_ID,
        OPT_PACKET_INTERVAL,
        OPT_PACKET_SPACE,
        OPT_SAMPLING_SIZE,
        OPT_SAMPLING_POPULATION,
        OPT_SYSTEM_INIT_MS,
    }
)

VARIABLE_LENGTH: Final = 65535  # template field length meaning "length prefix in the record"
NTP_UNIX_OFFSET: Final = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01

#: fields one template may have: no exporter's comes near (a few dozen is usual). Each held
#: field costs about 100 bytes and a few microseconds to compile; a template with more ends
#: its set (``too_many_fields``) before its fields are read.
MAX_TEMPLATE_FIELDS: Final = 512
