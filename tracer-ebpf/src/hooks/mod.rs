//! One module per kernel hook.
pub mod capture;
pub mod drop;
pub mod retransmit;
pub mod tc;
