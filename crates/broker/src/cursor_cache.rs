//! The cursors a broker keeps in memory, at most [`CursorCache::MAX`]; the rest are read from
//! the cursors stream when asked for.

use std::collections::HashMap;

/// Cursor offsets by key (`<stream>,<partition>,<cursor id>`), bounded. Each entry keeps its
/// key's parts too, for the lag metrics.
#[derive(Debug, Default)]
pub(crate) struct CursorCache(HashMap<String, (CursorOf, i64)>);

/// What a cursor belongs to: stream, partition, cursor id.
pub(crate) type CursorOf = (String, i32, String);

impl CursorCache {
    /// Cursors kept at most.
    pub(crate) const MAX: usize = 512;

    pub(crate) fn get(&self, key: &str) -> Option<i64> {
        self.0.get(key).map(|e| e.1)
    }

    /// Every cursor kept, with its offset.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &(CursorOf, i64)> {
        self.0.values()
    }

    /// Remembers a cursor; at the limit, another one is forgotten to make room.
    pub(crate) fn insert(&mut self, key: String, of: CursorOf, offset: i64) {
        if self.0.len() >= Self::MAX
            && !self.0.contains_key(&key)
            && let Some(k) = self.0.keys().next().cloned()
        {
            self.0.remove(&k);
        }
        self.0.insert(key, (of, offset));
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_never_holds_more_than_its_limit() {
        let mut c = CursorCache::default();
        for i in 0..CursorCache::MAX * 3 {
            c.insert(
                format!("s,0,c{i}"),
                ("s".into(), 0, format!("c{i}")),
                i as i64,
            );
            assert!(c.len() <= CursorCache::MAX);
        }
        assert_eq!(c.len(), CursorCache::MAX);
        // The newest is always kept, and an update of a kept key evicts nothing.
        let last = format!("s,0,c{}", CursorCache::MAX * 3 - 1);
        assert_eq!(c.get(&last), Some(CursorCache::MAX as i64 * 3 - 1));
        c.insert(last.clone(), ("s".into(), 0, "c".into()), 7);
        assert_eq!((c.len(), c.get(&last)), (CursorCache::MAX, Some(7)));
    }
}
