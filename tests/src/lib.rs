//! Helpers shared by the end-to-end tests. Every test builds its own namespaces under a
//! unique prefix and tears them down in a guard that also runs when the test panics.
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use xtask::netns;

/// A namespace prefix unique to this test process and call, e.g. `t1234x3-`.
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("t{}{tag}{n}-", std::process::id() % 100_000)
}

/// Two namespaces `<prefix>a` / `<prefix>b` joined by a veth pair `va` <-> `vb`
/// (198.18.250.1/24 and .2). Deleted on drop.
pub struct VethPair {
    pub a: String,
    pub b: String,
}

impl VethPair {
    pub fn new(tag: &str) -> Result<VethPair> {
        let p = unique_prefix(tag);
        let pair = VethPair { a: format!("{p}a"), b: format!("{p}b") };
        netns::add(&pair.a)?;
        netns::add(&pair.b)?;
        netns::ip_batch(
            &pair.a,
            &[
                format!("link add va type veth peer name vb netns {}", pair.b),
                "addr add 198.18.250.1/24 dev va".into(),
                "link set va up".into(),
                "link set lo up".into(),
            ],
        )?;
        netns::ip_batch(
            &pair.b,
            &["addr add 198.18.250.2/24 dev vb".into(), "link set vb up".into(), "link set lo up".into()],
        )?;
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = netns::del(&self.a);
        let _ = netns::del(&self.b);
    }
}
