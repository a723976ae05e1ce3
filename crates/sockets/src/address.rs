//! Socket addresses written as strings: `tcp://host:port`, `unix:///path`,
//! `unix-abstract://name`, `udp://host:port`.

use std::{
    fmt,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    str::FromStr,
};

use ipckit_core::Error;

/// Where a socket listens or connects.
///
/// Parsed from text (`"tcp://127.0.0.1:7000".parse()`); text that is not an address is
/// [`Error::InvalidAddress`], naming it and saying why. An address is plain data: pass it
/// to a child process as text (its `Display` form parses back to the same address).
///
/// ```
/// use ipckit_sockets::Address;
///
/// let a: Address = "tcp://127.0.0.1:7000".parse()?;
/// assert_eq!(a.to_string(), "tcp://127.0.0.1:7000");
/// let u: Address = "unix:///tmp/chat.sock".parse()?;
/// assert_eq!(u, Address::Unix("/tmp/chat.sock".into()));
/// # Ok::<(), ipckit_sockets::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address; `tcp://127.0.0.1:7000`, `tcp://[::1]:7000`, `tcp://localhost:7000`.
    Tcp(SocketAddr),
    /// A Unix socket file; `unix:///path/to.sock` (or `unix://relative.sock`).
    Unix(PathBuf),
    /// A Linux abstract Unix socket (no file); `unix-abstract://name`.
    UnixAbstract(String),
    /// A UDP address; `udp://127.0.0.1:7000`.
    Udp(SocketAddr),
}

fn bad(s: &str, why: &str) -> Error {
    Error::InvalidAddress {
        address: s.to_string(),
        reason: why.to_string(),
    }
}

fn resolve(s: &str, rest: &str) -> Result<SocketAddr, Error> {
    rest.to_socket_addrs()
        .map_err(|e| bad(s, &e.to_string()))?
        .next()
        .ok_or_else(|| bad(s, "the host resolves to no address"))
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad(s, "expected scheme://…"))?;
        if rest.is_empty() {
            return Err(bad(s, "nothing after the scheme"));
        }
        match scheme {
            "tcp" => Ok(Address::Tcp(resolve(s, rest)?)),
            "udp" => Ok(Address::Udp(resolve(s, rest)?)),
            "unix" => Ok(Address::Unix(PathBuf::from(rest))),
            "unix-abstract" => {
                if rest.len() > 107 {
                    return Err(bad(s, "an abstract name has at most 107 bytes"));
                }
                Ok(Address::UnixAbstract(rest.to_string()))
            }
            _ => Err(bad(s, "the scheme is one of tcp, udp, unix, unix-abstract")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Udp(a) => write!(f, "udp://{a}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::UnixAbstract(n) => write!(f, "unix-abstract://{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_round_trips() {
        for s in [
            "tcp://127.0.0.1:7000",
            "tcp://[::1]:7000",
            "udp://127.0.0.1:9",
            "unix:///tmp/x.sock",
            "unix-abstract://chat",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn bad_addresses_say_why() {
        for s in [
            "127.0.0.1:7000",
            "tcp://",
            "http://x:1",
            "tcp://127.0.0.1",
            "tcp://no-such-host.invalid:1",
        ] {
            let e = s.parse::<Address>().unwrap_err();
            assert!(
                matches!(&e, Error::InvalidAddress { address, .. } if address == s),
                "{s}: {e}"
            );
        }
    }
}
