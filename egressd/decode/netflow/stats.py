"""Counters kept by the NetFlow / IPFIX decoder: what came in, what came out, what was lost.

Plain ints bumped on the hot path and read by the metrics sink on scrape; reasons are bounded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class NetflowStats:
    """Everything one :class:`NetflowDecoder` has seen. Sizes are refreshed after each datagram."""

    datagrams: int = 0  # datagrams given to decode()
    records: int = 0  # flow records returned
    templates: int = 0  # template and options-template records received
    templates_expired: int = 0  # dropped because not refreshed within template_timeout
    templates_evicted: int = 0  # dropped to stay within max_templates
    option_domains_evicted: int = (
        0  # exporter domains' options data dropped to stay within max_templates
    )
    templates_withdrawn: int = 0  # withdrawn by the exporter (IPFIX field count 0)
    templates_restart: int = 0  # dropped as suspect because their exporter restarted
    exporter_restarts: int = 0  # restarts noticed (sysUptime back, sequence reset, new init time)
    options_records: int = 0  # options data records read (sampling, system init time)
    pending_sets: int = 0  # data sets buffered because their template was not known yet
    pending_decoded: int = 0  # buffered sets decoded once their template arrived
    pending_dropped: int = 0  # buffered sets dropped to stay within max_pending
    pending_expired: int = 0  # buffered sets whose template never came within pending_timeout
    decode_errors: Counter[str] = field(default_factory=Counter)  # whole datagrams rejected
    set_errors: Counter[str] = field(default_factory=Counter)  # sets or records skipped
    template_count: int = 0  # templates currently cached
    pending_count: int = 0  # sets currently buffered
