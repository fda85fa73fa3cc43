//! The configured sources as they run now, shared by the ingest pipeline, the forwarder
//! and the admin API. A reload ([`crate::reload`]) replaces the whole table in one step;
//! a request in flight keeps the [`Source`] it was routed to, so it is verified and
//! admitted under one version of its source, never half of each.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::headers::HeaderPolicy;
use crate::source::Source;

/// The routing-key template of a source that is no longer configured.
const DEFAULT_ROUTE: &str = "{source}.{type}";

/// Sources by name, hashed with foldhash: every request looks its source up here, and
/// the standard library's SipHash of the name cost more than the lookup.
pub type Table = HashMap<String, Arc<Source>, foldhash::quality::RandomState>;

/// Sources by name. Clones share one table.
#[derive(Clone, Default)]
pub struct Sources(Arc<ArcSwap<Table>>);

impl Sources {
    pub fn new(sources: Table) -> Sources {
        Sources(Arc::new(ArcSwap::from_pointee(sources)))
    }

    /// Puts `sources` in place of the whole table.
    pub fn replace(&self, sources: Table) {
        self.0.store(Arc::new(sources));
    }

    /// The table as it is now.
    pub fn snapshot(&self) -> Arc<Table> {
        self.0.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Source>> {
        self.0.load().get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.load().contains_key(name)
    }

    /// Each source's name and scheme, sorted by name.
    pub fn named(&self) -> Vec<(String, String)> {
        let mut named: Vec<(String, String)> = self
            .0
            .load()
            .values()
            .map(|s| (s.name.clone(), s.scheme.name().to_string()))
            .collect();
        named.sort();
        named
    }

    /// The routing-key template of a source's messages.
    pub fn routing_key(&self, name: &str) -> String {
        self.0
            .load()
            .get(name)
            .map_or_else(|| DEFAULT_ROUTE.to_string(), |s| s.routing_key.clone())
    }

    /// Which kept headers of a source's stored events may be shown or forwarded. Applied
    /// when events are read, so that events journaled before a header was dropped (or
    /// under another config) are neither shown nor forwarded with it; a source no longer
    /// configured gets the default rule.
    pub fn header_policy(&self, name: &str) -> HeaderPolicy {
        self.0
            .load()
            .get(name)
            .map(|s| s.headers.clone())
            .unwrap_or_default()
    }
}
