//! The census: what an opening otherwise learns by walking every event and every
//! delivery record (counts by source and status, events per log segment, the queued
//! events' bytes, each subscription's delivery figures), written by a clean close and
//! read by the next opening instead of the walks. Those walks grow with the journal:
//! 6.4 s per million events on the benchmark machine, over a minute at 10 million.
//!
//! A census describes the index exactly as the close left it, so an opening trusts it
//! only when nothing changed since: the index covers the same log position it was
//! written at, and recovery found nothing to write or drop. Every opening deletes it
//! before anything else is written (the flush at the end of an opening makes that
//! durable before the first new event), so a crash after that always walks.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::index::Mark;
use super::store;
use super::{SourceCounts, SubStats, Trees};

/// The `meta` key of the census.
const CENSUS: &[u8] = b"census";
/// The census's format; a census of another is not read (the opening walks instead).
const VERSION: u8 = 1;

/// What a clean close knew.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Census {
    /// The log position the index covered at the close.
    pub covered: Mark,
    pub counts: BTreeMap<String, SourceCounts>,
    /// Events per log segment.
    pub live: BTreeMap<u64, u64>,
    /// The bytes of the queued events (without pending deliveries).
    pub queued_bytes: u64,
    pub sub_stats: HashMap<u64, SubStats>,
}

/// Records the census; the close's last index flush makes it durable.
pub fn write(trees: &Trees, census: &Census) -> store::Result<()> {
    let mut bytes = vec![VERSION];
    postcard::to_io(census, &mut bytes).expect("writing to a Vec cannot fail");
    trees.meta.insert(CENSUS, bytes)
}

/// Takes the census out of the index: whatever it held is read once at most. A census
/// that cannot be read is dropped as if there were none.
pub fn take(trees: &Trees) -> store::Result<Option<Census>> {
    let Some(bytes) = trees.meta.take(CENSUS)? else {
        return Ok(None);
    };
    Ok(match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    })
}
