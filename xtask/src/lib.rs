//! Library side of `cargo xtask`: the namespace lab, shared with the e2e tests and benchmarks.
pub mod lab;
pub mod netns;
