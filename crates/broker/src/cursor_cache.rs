//! The cursors a broker keeps in memory, at most [`CursorCache::MAX`]; the rest are read from
//! the cursors stream when asked for.

use std::collections::HashMap;

/// Cursor offsets by stream, partition and cursor id, bounded.
#[derive(Debug, Default)]
pub(crate) struct CursorCache(HashMap<CursorOf, i64>);

/// What a cursor belongs to: stream, partition, cursor id.
pub(crate) type CursorOf = (String, i32, String);

impl CursorCache {
    /// Cursors kept at most.
    pub(crate) const MAX: usize = 512;

    pub(crate) fn get(&self, of: &CursorOf) -> Option<i64> {
        self.0.get(of).copied()
    }

    /// Every cursor kept, with its offset.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&CursorOf, &i64)> {
        self.0.iter()
    }

    /// Remembers a cursor; at the limit, another one is forgotten to make room.
    pub(crate) fn insert(&mut self, of: CursorOf, offset: i64) {
        if self.0.len() >= Self::MAX
            && !self.0.contains_key(&of)
            && let Some(k) = self.0.keys().next().cloned()
        {
            self.0.remove(&k);
        }
        self.0.insert(of, offset);
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
            c.insert(("s".into(), 0, format!("c{i}")), i as i64);
            assert!(c.len() <= CursorCache::MAX);
        }
        assert_eq!(c.len(), CursorCache::MAX);
        // The newest is always kept, and an update of a kept key evicts nothing.
        let last: CursorOf = ("s".into(), 0, format!("c{}", CursorCache::MAX * 3 - 1));
        assert_eq!(c.get(&last), Some(CursorCache::MAX as i64 * 3 - 1));
        c.insert(last.clone(), 7);
        assert_eq!((c.len(), c.get(&last)), (CursorCache::MAX, Some(7)));
    }
}
