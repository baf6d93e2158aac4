//! What users read: the JSON contract, the table, the summary with every counter, and
//! `compare`'s figures and chart.
pub mod compare;
pub mod json;
pub mod node;
pub mod stitched;
pub mod summary;
pub mod svg;
pub mod table;
