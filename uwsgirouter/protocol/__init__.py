"""Sans-IO codec for the uwsgi protocol: requests and subscription datagrams.

Bytes in, events and values out; no sockets, clocks or threads. The router and the WSGI workers
wrap it in their own I/O loops.
"""

from __future__ import annotations

from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .packet import (
    HEADER_SIZE,
    MAX_VARS_SIZE,
    SUBSCRIPTION_MODIFIER1,
    Header,
    decode_header,
    decode_vars,
    encode_header,
    encode_packet,
    encode_vars,
)
from .request import (
    NEED_DATA,
    Body,
    ConnectionClosed,
    EndOfInput,
    NeedData,
    RequestHead,
    RequestReader,
    content_length,
    routing_key,
    whole_head,
)
from .subscription import Command, Subscription, decode_subscription, encode_subscription

__all__ = [
    "HEADER_SIZE",
    "MAX_VARS_SIZE",
    "NEED_DATA",
    "SUBSCRIPTION_MODIFIER1",
    "Body",
    "Command",
    "ConnectionClosed",
    "EndOfInput",
    "Header",
    "LocalProtocolError",
    "NeedData",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestHead",
    "RequestReader",
    "Subscription",
    "content_length",
    "decode_header",
    "decode_subscription",
    "decode_vars",
    "encode_header",
    "encode_packet",
    "encode_subscription",
    "encode_vars",
    "routing_key",
    "whole_head",
]
