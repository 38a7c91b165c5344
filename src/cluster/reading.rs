//! What a repair read, handed to the snapshot after it.

use super::redis;

/// What a repair read of the cluster, handed as a value to the snapshot that follows it
/// under the same lock ([`Cluster::snapshot_after`]), so that snapshot does not read the
/// same again. Opaque outside the backend that read it; equal only to itself.
#[derive(Clone)]
pub struct Reading(std::sync::Arc<redis::Reading>);

impl Reading {
    pub(crate) fn redis(r: redis::Reading) -> Reading {
        Reading(std::sync::Arc::new(r))
    }

    /// The Redis backend's reading, if no one else holds it (a clone of a report).
    pub(crate) fn into_redis(self) -> Option<redis::Reading> {
        std::sync::Arc::into_inner(self.0)
    }
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reading")
    }
}

impl PartialEq for Reading {
    fn eq(&self, other: &Reading) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}
