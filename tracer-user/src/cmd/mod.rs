//! The commands: each one resolves what to trace, runs a session and reports.
pub mod agent;
pub mod capture;
pub mod capture_via_agent;
pub mod compare;
pub mod kubectl;
pub mod node;
pub mod options;
pub mod targets;
pub mod trace;
pub mod trace_args;
pub mod via_agent;
