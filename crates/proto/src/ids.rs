//! Snowflake ids that fit in 53 bits, so JavaScript clients read them exactly.
//!
//! Layout (most significant first): 40 bits of milliseconds since [`EPOCH_MS`] (2026-01-01T00:00Z,
//! good for about 34 years), 5 bits of node id (`machine_id`, 0..=31) and 8 bits of sequence
//! (256 ids per millisecond per node). When a millisecond's sequence runs out the generator borrows
//! the next millisecond instead of sleeping, so a burst never blocks; the clock catches up after it.
//! A clock that steps backwards is handled the same way: ids stay strictly increasing per node.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2026-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
const NODE_BITS: u32 = 5;
const SEQ_BITS: u32 = 8;
const TIME_BITS: u32 = 40;
/// The largest node id (`machine_id`) a generator accepts.
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;
const MAX_SEQ: i64 = (1 << SEQ_BITS) - 1;

/// The parts of an id, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub millis: i64,
    pub node: u16,
    pub seq: u16,
}

/// Splits an id minted by [`Snowflake`] into its parts.
pub fn decompose(id: i64) -> Parts {
    Parts {
        millis: (id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS,
        node: ((id >> SEQ_BITS) & i64::from(MAX_NODE)) as u16,
        seq: (id & MAX_SEQ) as u16,
    }
}

/// Builds an id from its parts. `millis` is Unix milliseconds.
fn compose(millis: i64, node: u16, seq: i64) -> i64 {
    let since = (millis - EPOCH_MS).clamp(0, (1 << TIME_BITS) - 1);
    (since << (NODE_BITS + SEQ_BITS)) | (i64::from(node) << SEQ_BITS) | seq
}

#[derive(Debug)]
struct State {
    last_ms: i64,
    seq: i64,
}

/// A thread-safe id generator for one node.
#[derive(Debug)]
pub struct Snowflake {
    node: u16,
    state: Mutex<State>,
}

/// The node id was outside `0..=MAX_NODE`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("machine_id must be between 0 and {MAX_NODE}, got {0}")]
pub struct InvalidNode(pub u64);

impl Snowflake {
    pub fn new(node: u64) -> Result<Self, InvalidNode> {
        let node = u16::try_from(node)
            .ok()
            .filter(|n| *n <= MAX_NODE)
            .ok_or(InvalidNode(node))?;
        Ok(Self {
            node,
            state: Mutex::new(State { last_ms: 0, seq: 0 }),
        })
    }

    /// The next id from the wall clock.
    pub fn next_id(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(EPOCH_MS, |d| d.as_millis() as i64);
        self.next_at(now)
    }

    /// The next id as if the clock read `now_ms`; ids are strictly increasing whatever `now_ms` does.
    pub fn next_at(&self, now_ms: i64) -> i64 {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now_ms > st.last_ms {
            st.last_ms = now_ms;
            st.seq = 0;
        } else if st.seq < MAX_SEQ {
            st.seq += 1;
        } else {
            st.last_ms += 1;
            st.seq = 0;
        }
        compose(st.last_ms, self.node, st.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_JS: i64 = (1 << 53) - 1;

    #[test]
    fn ids_fit_in_53_bits_until_the_layout_runs_out() {
        let g = Snowflake::new(u64::from(MAX_NODE)).expect("valid node");
        let far_future = EPOCH_MS + (1 << TIME_BITS) - 1;
        for _ in 0..1000 {
            assert!(g.next_at(far_future) <= MAX_JS);
        }
    }

    #[test]
    fn node_out_of_range_is_refused() {
        assert_eq!(Snowflake::new(32).unwrap_err(), InvalidNode(32));
        assert!(Snowflake::new(31).is_ok());
    }

    #[test]
    fn a_burst_borrows_the_next_millisecond_instead_of_repeating() {
        let g = Snowflake::new(3).expect("valid node");
        let t = EPOCH_MS + 1_000;
        let ids: Vec<i64> = (0..600).map(|_| g.next_at(t)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(decompose(ids[256]).millis, t + 1);
        assert!(ids.iter().all(|id| decompose(*id).node == 3));
    }

    proptest! {
        #[test]
        fn ids_strictly_increase_whatever_the_clock_does(clock in prop::collection::vec(0i64..10_000, 1..500), node in 0u64..=31) {
            let g = Snowflake::new(node).expect("valid node");
            let mut last = -1;
            for c in clock {
                let id = g.next_at(EPOCH_MS + c);
                prop_assert!(id > last);
                prop_assert!(id <= MAX_JS);
                prop_assert_eq!(u64::from(decompose(id).node), node);
                last = id;
            }
        }

        #[test]
        fn two_nodes_never_mint_the_same_id(t in 0i64..1_000_000, n in 1usize..300) {
            let a = Snowflake::new(1).expect("valid node");
            let b = Snowflake::new(2).expect("valid node");
            let xs: std::collections::HashSet<i64> = (0..n).map(|_| a.next_at(EPOCH_MS + t)).collect();
            prop_assert!((0..n).all(|_| !xs.contains(&b.next_at(EPOCH_MS + t))));
        }
    }
}
