//! What users read: the JSON contract, the table, the summary with every counter,
//! `compare`'s figures and chart, and the paths (grouping, live view, diagram).
pub mod capture;
pub mod compare;
pub mod diagram;
pub mod group;
pub mod json;
pub mod live;
pub mod node;
pub mod path_json;
pub mod path_text;
pub mod pcapng;
pub mod stitched;
pub mod summary;
pub mod svg;
pub mod table;
pub mod tui;
