//! From kernel observations and node facts to complete flows: the session pipeline, hop
//! events, union-find over tuples, NAT naming, drops.
pub mod capture_filter;
pub mod community_id;
pub mod conntrack_view;
pub mod context;
pub mod drops;
pub mod flows;
pub mod hops;
pub mod model;
pub mod nat;
pub mod session;
pub mod union_find;
