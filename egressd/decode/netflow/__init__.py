"""NetFlow v5, v9 (RFC 3954) and IPFIX (RFC 7011) decoding, sans-IO.

Use :class:`NetflowDecoder`: datagram bytes, exporter address and clock in; FlowRecords out.
"""

from __future__ import annotations

from egressd.decode.netflow.decoder import NetflowDecoder
from egressd.decode.netflow.stats import NetflowStats
from egressd.decode.netflow.templates import TemplateCache

__all__ = ["NetflowDecoder", "NetflowStats", "TemplateCache"]
