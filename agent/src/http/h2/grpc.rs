//! gRPC's length-prefixed messages (a 1-byte compressed flag, a 4-byte big-endian length, the
//! message) on a stream's DATA: counts whole messages, never looks inside one.

/// The name of a gRPC status code (`grpc/status.h`), the bounded label value metrics use; a
/// code outside the 17 defined ones is `UNKNOWN_CODE` rather than its number.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN_CODE")
}

#[derive(Debug, Default)]
pub struct Messages {
    /// Prefix bytes seen of the message being read (0..5).
    prefix: [u8; 5],
    have: usize,
    /// Message bytes still to come.
    left: u64,
    /// A prefix was not captured: message boundaries are unknown for the rest of the stream.
    pub lost: bool,
}

impl Messages {
    /// Feeds DATA payload bytes; returns how many messages completed in them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut done = 0;
        while !self.lost && !bytes.is_empty() {
            if self.have < 5 {
                let n = (5 - self.have).min(bytes.len());
                self.prefix[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 5 {
                    let [_, a, b, c, d] = self.prefix;
                    self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
                    if self.left == 0 {
                        done += 1;
                        self.have = 0;
                    }
                }
                continue;
            }
            let n = (bytes.len() as u64).min(self.left);
            self.left -= n;
            bytes = &bytes[n as usize..];
            if self.left == 0 {
                done += 1;
                self.have = 0;
            }
        }
        done
    }

    /// `n` payload bytes were not captured: fine inside a message, fatal across a prefix.
    /// Returns how many messages completed.
    pub fn skip(&mut self, n: u64) -> u64 {
        if self.lost {
            return 0;
        }
        if self.have == 5 && n <= self.left {
            self.left -= n;
            if self.left == 0 {
                self.have = 0;
                return 1;
            }
            return 0;
        }
        self.lost = true;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_split_anywhere() {
        let mut wire = Vec::new();
        for len in [3u32, 0, 300, 1] {
            wire.push(0);
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for cut in 0..=wire.len() {
            let mut m = Messages::default();
            let n = m.feed(&wire[..cut]) + m.feed(&wire[cut..]);
            assert_eq!(n, 4, "cut at {cut}");
        }
        let mut m = Messages::default();
        assert_eq!(m.feed(&wire[..20]), 2);
        assert_eq!(m.skip(100), 0);
        assert!(!m.lost, "a skip inside a message keeps the boundaries");
        assert_eq!(m.skip(198), 1);
        assert_eq!(m.feed(&[0, 0, 0]), 0);
        assert_eq!(m.skip(10), 0);
        assert!(m.lost, "a skip across a prefix loses the boundaries");
    }
}
