//! Metric handles by stat name, defined on first use.

use std::collections::BTreeMap;

use meshguard_mesh::fasthash::U64Map;
use meshguard_mesh::metrics;

use crate::host::{Host, MetricKind};

/// Metric handles by stat name, defined on first use. At most [`metrics::MAX_SERIES`] series are
/// defined; a series beyond that is counted in its metric's overflow series (every label
/// `overflow`), so neither a large configuration nor hostile traffic can make the host refuse a
/// metric. A metric the host refuses is remembered as refused and not asked for again.
///
/// Each series is also cached under a small integer key the filter computes from its label
/// indices, so a request updates a metric with one hash of a `u64` and no name building. The
/// by-name table is only consulted on a key's first use; it is a `BTreeMap` because std's
/// `HashMap` seeds its hasher from WASI's random source, whose failure path alone (an errno's
/// `Debug` text and the Unicode tables behind it) is several kilobytes of module.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: BTreeMap<String, Option<u32>>,
    defined: usize,
    by_key: U64Map<Option<u32>>,
}

impl Metrics {
    fn id(&mut self, host: &mut impl Host, kind: MetricKind, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return *id;
        }
        let name = if self.defined >= metrics::MAX_SERIES {
            let overflow = metrics::overflow_series(&name);
            if let Some(id) = self.ids.get(&overflow) {
                return *id;
            }
            overflow
        } else {
            name
        };
        let id = match host.define_metric(kind, name.as_bytes()) {
            Ok(id) => {
                self.defined += 1;
                Some(id)
            }
            Err(status) => {
                log::error!("cannot define metric {name}: host status {status}");
                None
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// Forgets the keys (after a reconfiguration gives them other meanings); the series and
    /// their names stay defined.
    pub fn clear_keys(&mut self) {
        self.by_key.clear();
    }

    fn keyed(
        &mut self,
        host: &mut impl Host,
        kind: MetricKind,
        key: u64,
        name: impl FnOnce() -> String,
    ) -> Option<u32> {
        if let Some(id) = self.by_key.get(key) {
            return id;
        }
        let id = self.id(host, kind, name());
        self.by_key.insert(key, id);
        id
    }

    /// Adds one to the counter cached under `key`, named `name()` when first used.
    pub fn count_keyed(&mut self, host: &mut impl Host, key: u64, name: impl FnOnce() -> String) {
        if let Some(id) = self.keyed(host, MetricKind::Counter, key, name) {
            if let Err(status) = host.increment_metric(id, 1) {
                log::error!("cannot increment metric {id}: host status {status}");
            }
        }
    }

    /// Records `value` in the histogram cached under `key`, named `name()` when first used.
    pub fn record_keyed(
        &mut self,
        host: &mut impl Host,
        key: u64,
        name: impl FnOnce() -> String,
        value: u64,
    ) {
        if let Some(id) = self.keyed(host, MetricKind::Histogram, key, name) {
            if let Err(status) = host.record_metric(id, value) {
                log::error!("cannot record metric {id}: host status {status}");
            }
        }
    }
}
