//! Facts about the node, read from the kernel: links, addresses, routes and rules
//! (rtnetlink), the ENIs and pod veths they reveal, conntrack, NAT rules, and the pods'
//! metadata (pods file or Kubernetes API).
pub mod addr_math;
pub mod conntrack;
pub mod health;
pub mod imds;
pub mod inventory;
pub mod link_events;
pub mod links;
pub mod pod_source;
pub mod pods;
pub mod rules;
pub mod tc_programs;
