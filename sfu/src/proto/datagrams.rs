//! A queue of outgoing datagrams in one reusable byte buffer: no allocation per datagram once
//! the buffers have grown to a tick's worth of packets.

use std::net::SocketAddr;

/// Outgoing datagrams, in order, stored back to back in one buffer.
#[derive(Debug, Default)]
pub struct Datagrams {
    bytes: Vec<u8>,
    items: Vec<Entry>,
    /// Entries before `head` were consumed.
    head: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    source: SocketAddr,
    destination: SocketAddr,
    start: usize,
    len: usize,
}

/// One queued datagram.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The local address it is sent from.
    pub source: SocketAddr,
    /// Where it goes.
    pub destination: SocketAddr,
    /// Its bytes.
    pub contents: &'a [u8],
}

impl Datagrams {
    /// Queue a copy of `contents`.
    pub fn push(&mut self, source: SocketAddr, destination: SocketAddr, contents: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(contents);
        self.items.push(Entry {
            source,
            destination,
            start,
            len: contents.len(),
        });
    }

    /// Queue a datagram of at most `max_len` octets written in place by `write`, which returns
    /// the length it used, or `None` to queue nothing.
    pub(crate) fn push_with(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        max_len: usize,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        let start = self.bytes.len();
        self.bytes.resize(start + max_len, 0);
        match write(&mut self.bytes[start..]) {
            Some(len) if len <= max_len => {
                self.bytes.truncate(start + len);
                self.items.push(Entry {
                    source,
                    destination,
                    start,
                    len,
                });
                true
            }
            _ => {
                self.bytes.truncate(start);
                false
            }
        }
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.items.len() - self.head
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th queued datagram.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        let e = self.items.get(self.head + i)?;
        Some(Datagram {
            source: e.source,
            destination: e.destination,
            contents: &self.bytes[e.start..e.start + e.len],
        })
    }

    /// The queued datagrams, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        self.items[self.head..].iter().map(|e| Datagram {
            source: e.source,
            destination: e.destination,
            contents: &self.bytes[e.start..e.start + e.len],
        })
    }

    /// Drop the `n` oldest datagrams (all if `n` is larger), e.g. after sending them. The
    /// buffers keep their capacity.
    pub fn consume(&mut self, n: usize) {
        self.head = (self.head + n).min(self.items.len());
        if self.head == self.items.len() {
            self.clear();
        }
    }

    /// Drop everything queued.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
        self.head = 0;
    }

    /// Keep the datagrams for which `keep` returns `true`, in order; `keep` sees each once
    /// (e.g. to send elsewhere those it does not keep). Rebuilds the queue only when it
    /// drops something.
    pub fn retain(&mut self, mut keep: impl FnMut(Datagram<'_>) -> bool) {
        let mut kept = Datagrams::default();
        let mut dropped = false;
        for d in self.iter() {
            if keep(d) {
                kept.push(d.source, d.destination, d.contents);
            } else {
                dropped = true;
            }
        }
        if dropped {
            *self = kept;
        }
    }

    /// Move every datagram of `other` to the end of this queue, leaving `other` empty. Swaps
    /// buffers instead of copying when this queue is empty.
    pub fn append(&mut self, other: &mut Datagrams) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.clear();
            std::mem::swap(self, other);
            return;
        }
        for i in 0..other.len() {
            if let Some(d) = other.get(i) {
                let start = self.bytes.len();
                self.bytes.extend_from_slice(d.contents);
                self.items.push(Entry {
                    source: d.source,
                    destination: d.destination,
                    start,
                    len: d.contents.len(),
                });
            }
        }
        other.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_consume_append_keep_order() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut q = Datagrams::default();
        q.push(a, b, &[1, 2, 3]);
        assert!(q.push_with(a, b, 10, |buf| {
            buf[..2].copy_from_slice(&[4, 5]);
            Some(2)
        }));
        assert!(!q.push_with(a, b, 10, |_| None));
        assert_eq!(q.len(), 2);
        let all: Vec<Vec<u8>> = q.iter().map(|d| d.contents.to_vec()).collect();
        assert_eq!(all, vec![vec![1, 2, 3], vec![4, 5]]);
        q.consume(1);
        assert_eq!(q.get(0).unwrap().contents, &[4, 5]);

        let mut other = Datagrams::default();
        other.push(b, a, &[6]);
        q.append(&mut other);
        assert!(other.is_empty());
        let all: Vec<Vec<u8>> = q.iter().map(|d| d.contents.to_vec()).collect();
        assert_eq!(all, vec![vec![4, 5], vec![6]]);
        assert_eq!(q.get(1).unwrap().destination, a);

        let mut empty = Datagrams::default();
        empty.append(&mut q);
        assert_eq!(empty.len(), 2);
        assert!(q.is_empty());
        empty.consume(5);
        assert!(empty.is_empty());

        let mut q = Datagrams::default();
        for i in 0..5u8 {
            q.push(if i % 2 == 0 { a } else { b }, a, &[i]);
        }
        let mut taken = Vec::new();
        q.retain(|d| {
            if d.source == a {
                return true;
            }
            taken.push(d.contents[0]);
            false
        });
        assert_eq!(taken, vec![1, 3]);
        let all: Vec<u8> = q.iter().map(|d| d.contents[0]).collect();
        assert_eq!(all, vec![0, 2, 4]);
    }
}
