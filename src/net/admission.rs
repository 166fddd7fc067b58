//! Admission of accepted connections: `limits.max_connections` (all
//! listeners together) and `limits.max_connections_per_ip`.
//!
//! Owns: the count of open client connections and the per-address table.
//! An address has an entry only while it has a connection open, so the
//! table never holds more than `max_connections` entries however many
//! addresses come and go.
//!
//! On a PROXY protocol listener the client's address is known only once
//! the header is read: such a connection takes its global place at accept
//! ([`Admission::admit_any`]) and its per-address place afterwards
//! ([`Admitted::place`]), under the address the header carries.
//!
//! An [`Admitted`] place travels with the client stream (inside the
//! stream hyper serves, then in the tunnel), so a tunnel counts as the
//! connection it is until its socket closes.
//!
//! Must not: wait or do I/O: it runs in the accept loop, once per accepted
//! socket, before anything else (the TLS handshake included).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `limits.max_connections` client connections are open already.
    #[error("over limits.max_connections")]
    Global,
    /// `limits.max_connections_per_ip` are open from this address already.
    #[error("over limits.max_connections_per_ip")]
    PerIp,
}

impl Refusal {
    /// A short fixed name, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Global => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The open client connections, counted for the limits.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    counts: Arc<Mutex<Counts>>,
    /// Kept equal to the total, for the metrics.
    gauge: Gauge,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    admission: Admission,
    /// `None` until the connection's address is known (see [`Admitted::place`]).
    ip: Option<IpAddr>,
}

impl Admission {
    /// An empty table that keeps `gauge` at its total.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            counts: Arc::default(),
            gauge,
        }
    }

    /// Admits a connection from `ip` if both limits allow it.
    ///
    /// # Errors
    /// The [`Refusal`] naming the limit it is over (the global one first).
    pub fn admit(&self, ip: IpAddr, max: usize, max_per_ip: usize) -> Result<Admitted, Refusal> {
        // An IPv4 client on a `[::]` listener is the same client as on `0.0.0.0`.
        let ip = ip.to_canonical();
        let mut c = self.lock();
        if c.total >= max {
            return Err(Refusal::Global);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            // An entry is only ever at zero here when max_per_ip is 0,
            // which validation forbids; never leave one behind.
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            return Err(Refusal::PerIp);
        }
        *n += 1;
        c.total += 1;
        self.gauge.set(c.total as i64);
        Ok(Admitted {
            admission: self.clone(),
            ip: Some(ip),
        })
    }

    /// Admits a connection whose address is not known yet against the
    /// global limit only; [`Admitted::place`] counts it under its address.
    ///
    /// # Errors
    /// [`Refusal::Global`].
    pub fn admit_any(&self, max: usize) -> Result<Admitted, Refusal> {
        let mut c = self.lock();
        if c.total >= max {
            return Err(Refusal::Global);
        }
        c.total += 1;
        self.gauge.set(c.total as i64);
        Ok(Admitted {
            admission: self.clone(),
            ip: None,
        })
    }

    /// Open client connections, all listeners together.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Addresses with at least one open connection: the table's size.
    pub fn addresses(&self) -> usize {
        self.lock().per_ip.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counting cannot panic half-way; a poisoned lock still holds good counts.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Admitted {
    /// Counts a connection admitted by [`Admission::admit_any`] under `ip`,
    /// the address its PROXY header carries, if `max_per_ip` allows it.
    /// Dropping a refused place gives its global place back.
    ///
    /// # Errors
    /// [`Refusal::PerIp`].
    pub fn place(&mut self, ip: IpAddr, max_per_ip: usize) -> Result<(), Refusal> {
        debug_assert!(self.ip.is_none(), "placed once");
        let ip = ip.to_canonical();
        let mut c = self.admission.lock();
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            return Err(Refusal::PerIp);
        }
        *n += 1;
        drop(c);
        self.ip = Some(ip);
        Ok(())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut c = a.lock();
        c.total = c.total.saturating_sub(1);
        a.gauge.set(c.total as i64);
        let Some(ip) = self.ip else { return };
        if let Some(n) = c.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn each_limit_refuses_and_places_come_back() {
        let a = Admission::default();
        let first = a.admit(ip(1), 3, 2).expect("first");
        let second = a.admit(ip(1), 3, 2).expect("second");
        assert_eq!(a.admit(ip(1), 3, 2).unwrap_err(), Refusal::PerIp);
        let other = a.admit(ip(2), 3, 2).expect("another address");
        assert_eq!(a.admit(ip(3), 3, 2).unwrap_err(), Refusal::Global);
        assert_eq!((a.open(), a.addresses(), a.gauge.get()), (3, 2, 3));
        drop(first);
        let again = a.admit(ip(1), 3, 2).expect("a place came back");
        drop((second, other, again));
        assert_eq!((a.open(), a.addresses()), (0, 0));
        assert_eq!(a.gauge.get(), 0);
    }

    #[test]
    fn the_table_holds_only_addresses_with_open_connections() {
        let a = Admission::default();
        for i in 0..=255u8 {
            for j in 0..=255u8 {
                let ip = IpAddr::from([10, 0, i, j]);
                drop(a.admit(ip, 1000, 1).expect("admitted"));
            }
        }
        assert_eq!((a.open(), a.addresses()), (0, 0));
        let held: Vec<_> = (0..=255u8)
            .filter_map(|i| a.admit(ip(i), 10, 10).ok())
            .collect();
        assert_eq!(
            (held.len(), a.addresses()),
            (10, 10),
            "refused ones leave no entry"
        );
    }

    #[test]
    fn a_place_taken_before_its_address_is_known_counts_under_it() {
        let a = Admission::default();
        let mut first = a.admit_any(3).expect("first");
        assert_eq!((a.open(), a.addresses()), (1, 0));
        first.place(ip(9), 1).expect("placed");
        let mut second = a.admit_any(3).expect("second");
        assert_eq!(second.place(ip(9), 1).unwrap_err(), Refusal::PerIp);
        drop(second);
        assert_eq!((a.open(), a.addresses()), (1, 1));
        let _direct = a.admit(ip(9), 3, 2).expect("shares the address's count");
        assert_eq!(a.admit(ip(9), 3, 2).unwrap_err(), Refusal::PerIp);
        let _third = a.admit_any(3).expect("third");
        assert_eq!(a.admit_any(3).unwrap_err(), Refusal::Global);
        drop((first, _direct, _third));
        assert_eq!((a.open(), a.addresses(), a.gauge.get()), (0, 0, 0));
    }

    #[test]
    fn a_mapped_ipv4_address_is_the_same_client() {
        let a = Admission::default();
        let _v4 = a.admit(ip(1), 10, 1).expect("v4");
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(a.admit(mapped, 10, 1).unwrap_err(), Refusal::PerIp);
    }
}
