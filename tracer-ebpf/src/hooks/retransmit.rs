//! `tcp:tcp_retransmit_skb` (raw tracepoint): TCP retransmissions per flow.
