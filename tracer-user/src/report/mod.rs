//! What users read: the JSON contract, the table, the summary with every counter, and
//! `compare`'s figures and chart.
pub mod capture;
pub mod compare;
pub mod json;
pub mod node;
pub mod pcapng;
pub mod stitched;
pub mod summary;
pub mod svg;
pub mod table;
