//! `podtrace capture --filter`: a small expression language over the addresses, ports and
//! protocol a packet carries, evaluated in user space on the tuple the kernel parsed.
//!
//! ```text
//! expr      := or
//! or        := and ( ("or" | "||") and )*
//! and       := not ( ("and" | "&&") not )*
//! not       := ("not" | "!") not | "(" expr ")" | primitive
//! primitive := proto [ [dir] kind value ]        tcp, udp port 53, tcp dst port 443
//!            | [dir] kind value                  host 10.0.0.1, src port 8080
//! proto     := tcp | udp | icmp | icmp6 | ip | ip6
//! dir       := src | dst                         (neither: either end)
//! kind      := host ADDR | net ADDR/LEN | port N | portrange N-M
//! ```
//!
//! `tcp port 443` is one primitive (TCP and port 443), so `not tcp port 443` negates both, as
//! in tcpdump. Ports match TCP and UDP only. A frame that did not parse (ARP, a malformed
//! header) matches no primitive. `capture` applies the filter to each packet at every hop: a
//! packet that matches at one hop (before or after a NAT) is written at all of them.
use std::net::IpAddr;

use tracer_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Tuple};

use crate::kernel::addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Ip,
    Ip6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    Either,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Net(IpAddr, u8),
    Ports(u16, u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Primitive { proto: Option<Proto>, dir: Dir, kind: Option<Kind> },
}

/// A parsed filter expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter(Expr);

impl Filter {
    /// Parses an expression; the error is one line naming the word that is wrong.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, pos: 0 };
        if p.tokens.is_empty() {
            return Err("empty filter".into());
        }
        let f = p.or()?;
        match p.peek() {
            None => Ok(Filter(f)),
            Some(t) => Err(format!("unexpected {t:?} at word {}", p.pos + 1)),
        }
    }

    /// Does a packet with this tuple (`None`: the frame did not parse) match?
    pub fn matches(&self, t: Option<&Tuple>) -> bool {
        self.0.matches(t)
    }
}

impl Expr {
    fn matches(&self, t: Option<&Tuple>) -> bool {
        match self {
            Expr::And(a, b) => a.matches(t) && b.matches(t),
            Expr::Or(a, b) => a.matches(t) || b.matches(t),
            Expr::Not(a) => !a.matches(t),
            Expr::Primitive { proto, dir, kind } => {
                let Some(t) = t else { return false };
                proto.is_none_or(|p| proto_matches(p, t)) && kind.is_none_or(|k| kind_matches(k, *dir, t))
            }
        }
    }
}

fn proto_matches(p: Proto, t: &Tuple) -> bool {
    match p {
        Proto::Tcp => t.proto == PROTO_TCP,
        Proto::Udp => t.proto == PROTO_UDP,
        Proto::Icmp => t.proto == PROTO_ICMP,
        Proto::Icmp6 => t.proto == PROTO_ICMPV6,
        Proto::Ip => t.family == FAMILY_V4,
        Proto::Ip6 => t.family == FAMILY_V6,
    }
}

fn kind_matches(k: Kind, dir: Dir, t: &Tuple) -> bool {
    let ends = [(dir != Dir::Dst, &t.src, t.sport), (dir != Dir::Src, &t.dst, t.dport)];
    ends.iter().any(|(wanted, a, port)| {
        *wanted
            && match k {
                Kind::Net(net, len) => in_net(addr::ip(a, t.family), net, len),
                Kind::Ports(lo, hi) => {
                    (t.proto == PROTO_TCP || t.proto == PROTO_UDP) && (lo..=hi).contains(port)
                }
            }
    })
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                out.push(c.to_string());
                chars.next();
            }
            '!' => {
                out.push("not".into());
                chars.next();
            }
            '&' | '|' => {
                chars.next();
                if chars.next() != Some(c) {
                    return Err(format!("{c:?} must be doubled ({c}{c})"));
                }
                out.push(if c == '&' { "and" } else { "or" }.into());
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "()!&|".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(w.to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<String>,
    pos: usize,
}

const KINDS: &str = "host, net, port or portrange";

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(String::as_str)
    }

    fn next(&mut self, what: &str) -> Result<String, String> {
        let t = self.tokens.get(self.pos).cloned().ok_or_else(|| format!("expected {what} at the end"))?;
        self.pos += 1;
        Ok(t)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut f = self.and()?;
        while self.peek() == Some("or") {
            self.pos += 1;
            f = Expr::Or(Box::new(f), Box::new(self.and()?));
        }
        Ok(f)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut f = self.not()?;
        while self.peek() == Some("and") {
            self.pos += 1;
            f = Expr::And(Box::new(f), Box::new(self.not()?));
        }
        Ok(f)
    }

    fn not(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some("not") => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.not()?)))
            }
            Some("(") => {
                self.pos += 1;
                let f = self.or()?;
                match self.next("\")\"")?.as_str() {
                    ")" => Ok(f),
                    t => Err(format!("expected \")\", found {t:?} at word {}", self.pos)),
                }
            }
            _ => self.primitive(),
        }
    }

    fn primitive(&mut self) -> Result<Expr, String> {
        let first = self.next(&format!("a protocol or {KINDS}"))?;
        let proto = match first.as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "icmp" => Some(Proto::Icmp),
            "icmp6" | "icmpv6" => Some(Proto::Icmp6),
            "ip" => Some(Proto::Ip),
            "ip6" => Some(Proto::Ip6),
            _ => None,
        };
        if proto.is_some() {
            // A protocol alone, or qualifying the primitive that follows.
            let qualifies =
                matches!(self.peek(), Some("src" | "dst" | "host" | "net" | "port" | "portrange"));
            if !qualifies {
                return Ok(Expr::Primitive { proto, dir: Dir::Either, kind: None });
            }
        } else {
            self.pos -= 1;
        }
        let mut word = self.next(KINDS)?;
        let dir = match word.as_str() {
            "src" => Dir::Src,
            "dst" => Dir::Dst,
            _ => Dir::Either,
        };
        if dir != Dir::Either {
            word = self.next(KINDS)?;
        }
        let at = self.pos;
        let kind = match word.as_str() {
            "host" => {
                let v = self.next("an address after host")?;
                let ip: IpAddr =
                    v.parse().map_err(|_| format!("{v:?} is not an IP address (word {})", at + 1))?;
                Kind::Net(ip, if ip.is_ipv4() { 32 } else { 128 })
            }
            "net" => {
                let v = self.next("ADDR/LEN after net")?;
                let (a, l) =
                    v.split_once('/').ok_or_else(|| format!("{v:?} is not ADDR/LEN (word {})", at + 1))?;
                let ip: IpAddr =
                    a.parse().map_err(|_| format!("{a:?} is not an IP address (word {})", at + 1))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len: u8 = l
                    .parse()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("bad prefix length {l:?} in {v:?}"))?;
                Kind::Net(ip, len)
            }
            "port" => {
                let v = self.next("a port number after port")?;
                let p = port(&v)?;
                Kind::Ports(p, p)
            }
            "portrange" => {
                let v = self.next("N-M after portrange")?;
                let (a, b) = v.split_once('-').ok_or_else(|| format!("{v:?} is not a port range N-M"))?;
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("port range {v:?} is empty"));
                }
                Kind::Ports(a, b)
            }
            other => {
                return Err(format!("unknown word {other:?} at word {at}: expected a protocol or {KINDS}"));
            }
        };
        Ok(Expr::Primitive { proto, dir, kind: Some(kind) })
    }
}

fn port(v: &str) -> Result<u16, String> {
    v.parse().map_err(|_| format!("{v:?} is not a port number (0-65535)"))
}

#[cfg(test)]
mod tests;
