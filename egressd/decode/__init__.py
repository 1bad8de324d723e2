"""Sans-IO decoders: bytes in, :class:`~egressd.model.FlowRecord` out.

Decoders never touch sockets, clocks or globals; template state is passed in. The only
exception they raise is :class:`~egressd.errors.DecodeError` (with a bounded ``reason``).
"""
