//! `skb:kfree_skb` (raw tracepoint): packets of traced flows freed with a drop reason.
//! Implemented in the drops issue; the program exists so the object layout is stable.
