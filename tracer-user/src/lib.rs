//! podtrace as a library, in layers: `kernel` (programs, maps) → `node` (what the node's
//! state says) → `assemble` (flows from both) → `report` (the JSON contract, tables, charts)
//! → `cmd` (the commands). The CLI in main.rs is a thin layer over `cmd`.
pub mod assemble;
pub mod cmd;
pub mod kernel;
pub mod node;
pub mod report;
