//! What the backend that took a snapshot read with it for its own moves, carried by the
//! snapshot as a value and handed back to the backend with it.
//!
//! Owns: [`BackendView`]. Does not own: what a backend puts in it (Redis: the topology
//! its moves take node ids and replicas from).

use std::any::Any;
use std::sync::Arc;

/// One backend's reading beside a snapshot, opaque to everything else. Not data of the
/// snapshot: never serialized, and equal to any other, so two snapshots of one layout
/// compare equal whoever took them. A snapshot read from a file, or built by hand,
/// carries none; its backend then reads what it needs.
#[derive(Clone, Default)]
pub struct BackendView(Option<Arc<dyn Any + Send + Sync>>);

impl BackendView {
    pub fn new<T: Any + Send + Sync>(reading: T) -> BackendView {
        BackendView(Some(Arc::new(reading)))
    }

    /// The reading, when it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref()?.downcast_ref()
    }
}

impl std::fmt::Debug for BackendView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BackendView(..)" } else { "BackendView(none)" })
    }
}

impl PartialEq for BackendView {
    fn eq(&self, _: &BackendView) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_gives_back_what_was_put_in_and_nothing_else() {
        let v = BackendView::new(7u32);
        assert_eq!((v.get::<u32>(), v.get::<String>()), (Some(&7), None));
        assert_eq!(BackendView::default().get::<u32>(), None);
        assert_eq!(v, BackendView::default(), "not data of the snapshot");
        assert_eq!(format!("{v:?} {:?}", BackendView::default()), "BackendView(..) BackendView(none)");
    }
}
