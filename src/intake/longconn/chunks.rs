//! Reassembly of events Feishu splits into chunks (feishu-protocol.md §2.7): chunks share a
//! `message_id`, carry `sum` and a 0-based `seq`, and may arrive in any order.
//!
//! Everything is bounded (chunks per message, bytes per message with its id, messages in
//! flight; ids are at most [`MAX_ID_LEN`] bytes, checked by the session) and an
//! incomplete message expires after a TTL refreshed by each chunk, as in the SDKs. A dropped
//! message is not lost: Feishu redelivers what was never acked.

use std::collections::HashMap;
use tokio::time::{Duration, Instant};

/// Longest `message_id` (or other header value) that is kept or logged. Feishu's ids are
/// short; a longer one makes the frame malformed.
pub const MAX_ID_LEN: usize = 128;

/// `s` cut to at most `max` bytes on a character boundary, for logs.
pub fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reassembly bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    pub max_chunks: usize,
    pub max_message_bytes: usize,
    pub max_in_flight: usize,
    pub ttl: Duration,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        Self {
            max_chunks: 64,
            max_message_bytes: 4 * 1024 * 1024,
            max_in_flight: 64,
            ttl: Duration::from_secs(5),
        }
    }
}

/// What a chunk led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// The message is complete: its payload, concatenated in `seq` order.
    Complete(Vec<u8>),
    /// More chunks are needed.
    Pending,
    /// The chunk is refused (bad numbering, over a limit); the message is dropped.
    Refused(&'static str),
}

#[derive(Debug)]
struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
    expires: Instant,
}

/// Messages being reassembled on one connection.
#[derive(Debug, Default)]
pub struct Reassembler {
    limits: ChunkLimits,
    partial: HashMap<String, Partial>,
}

impl Reassembler {
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            limits,
            partial: HashMap::new(),
        }
    }

    /// Adds one chunk. `sum` and `seq` are the raw header values.
    pub fn push(
        &mut self,
        message_id: &str,
        sum: Option<&str>,
        seq: Option<&str>,
        payload: Vec<u8>,
    ) -> Assembled {
        let now = Instant::now();
        self.expire(now);
        let (sum, seq) = match (
            sum.unwrap_or("1").parse::<usize>(),
            seq.unwrap_or("0").parse::<usize>(),
        ) {
            (Ok(sum), Ok(seq)) if sum >= 1 && seq < sum => (sum, seq),
            _ => return self.refuse(message_id, "sum and seq must satisfy 0 <= seq < sum"),
        };
        if sum == 1 {
            return Assembled::Complete(payload);
        }
        if sum > self.limits.max_chunks {
            return self.refuse(message_id, "too many chunks for one message");
        }
        if !self.partial.contains_key(message_id) && self.partial.len() >= self.limits.max_in_flight
        {
            return Assembled::Refused("too many chunked messages in flight");
        }
        let limits = self.limits;
        let entry = self
            .partial
            .entry(message_id.to_owned())
            .or_insert_with(|| Partial {
                parts: vec![None; sum],
                received: 0,
                // The key is held as long as the parts: it counts against the same budget.
                bytes: message_id.len(),
                expires: now + limits.ttl,
            });
        if entry.parts.len() != sum {
            return self.refuse(message_id, "a chunk's sum disagrees with the first chunk's");
        }
        entry.expires = now + limits.ttl;
        if entry.parts[seq].is_none() {
            entry.bytes += payload.len();
            entry.received += 1;
            entry.parts[seq] = Some(payload);
        }
        if entry.bytes > limits.max_message_bytes {
            return self.refuse(message_id, "message larger than the reassembly limit");
        }
        if entry.received < sum {
            return Assembled::Pending;
        }
        let done = self.partial.remove(message_id).expect("entry exists");
        Assembled::Complete(done.parts.into_iter().flatten().flatten().collect())
    }

    /// Drops messages whose TTL has passed; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .partial
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.partial.remove(id);
        }
        expired
    }

    /// Messages waiting for chunks.
    pub fn in_flight(&self) -> usize {
        self.partial.len()
    }

    fn refuse(&mut self, message_id: &str, why: &'static str) -> Assembled {
        self.partial.remove(message_id);
        Assembled::Refused(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ChunkLimits {
        ChunkLimits {
            max_chunks: 4,
            max_message_bytes: 10,
            max_in_flight: 2,
            ttl: Duration::from_secs(5),
        }
    }

    #[test]
    fn whole_and_out_of_order_chunks() {
        let mut r = Reassembler::new(limits());
        assert_eq!(
            r.push("a", Some("1"), Some("0"), b"xyz".to_vec()),
            Assembled::Complete(b"xyz".to_vec())
        );
        assert_eq!(
            r.push("b", None, None, b"q".to_vec()),
            Assembled::Complete(b"q".to_vec())
        );
        assert_eq!(
            r.push("c", Some("3"), Some("2"), b"3".to_vec()),
            Assembled::Pending
        );
        assert_eq!(
            r.push("c", Some("3"), Some("0"), b"1".to_vec()),
            Assembled::Pending
        );
        assert_eq!(
            r.push("c", Some("3"), Some("0"), b"1".to_vec()),
            Assembled::Pending,
            "a repeated chunk counts once"
        );
        assert_eq!(
            r.push("c", Some("3"), Some("1"), b"2".to_vec()),
            Assembled::Complete(b"123".to_vec())
        );
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn bounds_are_enforced() {
        let mut r = Reassembler::new(limits());
        assert!(matches!(
            r.push("a", Some("2"), Some("2"), vec![]),
            Assembled::Refused(_)
        ));
        assert!(matches!(
            r.push("a", Some("0"), Some("0"), vec![]),
            Assembled::Refused(_)
        ));
        assert!(matches!(
            r.push("a", Some("x"), Some("0"), vec![]),
            Assembled::Refused(_)
        ));
        assert!(
            matches!(
                r.push("a", Some("5"), Some("0"), vec![]),
                Assembled::Refused(_)
            ),
            "too many chunks"
        );
        assert_eq!(
            r.push("a", Some("2"), Some("0"), vec![0; 6]),
            Assembled::Pending
        );
        assert!(
            matches!(
                r.push("a", Some("2"), Some("1"), vec![0; 6]),
                Assembled::Refused(_)
            ),
            "too many bytes"
        );
        assert_eq!(r.in_flight(), 0);
        assert!(
            matches!(
                r.push("eight-by", Some("2"), Some("0"), vec![0; 3]),
                Assembled::Refused(_)
            ),
            "the id counts against the byte budget"
        );
        assert_eq!(truncated("ab\u{e9}cd", 3), "ab");
        assert_eq!(truncated("abc", 128), "abc");
        assert_eq!(
            r.push("a", Some("2"), Some("0"), vec![]),
            Assembled::Pending
        );
        assert!(
            matches!(
                r.push("a", Some("3"), Some("1"), vec![]),
                Assembled::Refused(_)
            ),
            "sum changed"
        );
        assert_eq!(
            r.push("a", Some("2"), Some("0"), vec![]),
            Assembled::Pending
        );
        assert_eq!(
            r.push("b", Some("2"), Some("0"), vec![]),
            Assembled::Pending
        );
        assert!(
            matches!(
                r.push("c", Some("2"), Some("0"), vec![]),
                Assembled::Refused(_)
            ),
            "in flight"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn incomplete_messages_expire_after_the_ttl_refreshed_by_each_chunk() {
        let mut r = Reassembler::new(limits());
        assert_eq!(
            r.push("a", Some("3"), Some("0"), b"1".to_vec()),
            Assembled::Pending
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            r.push("a", Some("3"), Some("1"), b"2".to_vec()),
            Assembled::Pending
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(
            r.expire(Instant::now()).is_empty(),
            "refreshed by the second chunk"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.expire(Instant::now()), vec!["a".to_owned()]);
        assert_eq!(
            r.push("a", Some("3"), Some("2"), b"3".to_vec()),
            Assembled::Pending,
            "starts over"
        );
    }
}
