//! Union-find over undirected tuples that also tracks direction (parity): "same direction" (a
//! hop event, or conntrack's original vs. its NATed form) or "opposite direction" (a tuple and
//! its reverse, conntrack original vs. reply). Each component is one connection; within it
//! every tuple is either in the initiating direction or the reply direction.
use tracer_common::Tuple;

/// The tuples are known up front, so a node is its tuple's position in a sorted array (no hash
/// table: a third of the memory at 100 000 flows).
pub struct Uf {
    /// Canonical (undirected) tuples, sorted and unique.
    nodes: Vec<Tuple>,
    parent: Vec<u32>,
    /// Parity of a node relative to its parent (1 = opposite orientation).
    parity: Vec<u8>,
}

/// A tuple's undirected form and its orientation relative to it.
fn canon(t: &Tuple) -> (Tuple, u8) {
    let r = t.reversed();
    if r < *t { (r, 1) } else { (*t, 0) }
}

impl Uf {
    pub fn new(tuples: impl Iterator<Item = Tuple>) -> Uf {
        let mut nodes: Vec<Tuple> = tuples.map(|t| canon(&t).0).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.shrink_to_fit();
        let n = nodes.len() as u32;
        Uf { nodes, parent: (0..n).collect(), parity: vec![0; n as usize] }
    }

    /// Node and orientation of a directed tuple, if it is known.
    pub fn get(&self, t: &Tuple) -> Option<(u32, u8)> {
        let (c, o) = canon(t);
        self.nodes.binary_search(&c).ok().map(|i| (i as u32, o))
    }

    /// Root and parity of `x` relative to the root (with path compression).
    fn find(&mut self, x: u32) -> (u32, u8) {
        let p = self.parent[x as usize];
        if p == x {
            return (x, 0);
        }
        let (root, pp) = self.find(p);
        self.parent[x as usize] = root;
        self.parity[x as usize] ^= pp;
        (root, self.parity[x as usize])
    }

    /// Records that directed tuples `a` and `b` travel in the same (`opposite == false`) or
    /// opposite direction. Contradictions (tuple reuse) are ignored.
    pub fn relate(&mut self, a: &Tuple, b: &Tuple, opposite: bool) {
        let (Some((na, oa)), Some((nb, ob))) = (self.get(a), self.get(b)) else { return };
        let (ra, pa) = self.find(na);
        let (rb, pb) = self.find(nb);
        if ra == rb {
            return;
        }
        // direction(t) = orientation(t) ^ parity(node -> root)
        let want = oa ^ ob ^ opposite as u8;
        self.parent[rb as usize] = ra;
        self.parity[rb as usize] = pa ^ pb ^ want;
    }

    /// Component and direction bit of a directed tuple.
    pub fn direction(&mut self, t: &Tuple) -> Option<(u32, u8)> {
        let (n, o) = self.get(t)?;
        let (root, p) = self.find(n);
        Some((root, o ^ p))
    }
}
