//! The sparse offset and time index of one segment, in memory and on disk.
//!
//! An entry is added for the first record of a segment and then for the first record written after
//! at least `index_interval_bytes` more bytes, so a lookup is a binary search over the entries plus
//! a scan of at most one interval. Each entry also carries the largest timestamp of all records up
//! to and including its own, a non-decreasing key that makes the time lookup a binary search even
//! when timestamps are not in order.
//!
//! The active segment's index lives only in memory. It is written to the `.index` file when the
//! segment is sealed and on a clean close; after a crash it is rebuilt from the `.log`. See
//! `docs/format.md` for the file layout.

use bytes::BufMut;

/// Bytes of the index file header.
pub(crate) const INDEX_HEADER_LEN: usize = 48;
/// Bytes of one index entry.
pub(crate) const INDEX_ENTRY_LEN: usize = 16;
const INDEX_MAGIC: &[u8; 4] = b"LBIX";
const INDEX_VERSION: u16 = 1;

/// One index entry: where a record starts, and the largest timestamp up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Offset minus the segment's base offset.
    pub rel_offset: u32,
    /// Byte position of the record in the `.log` file.
    pub position: u32,
    /// The largest timestamp among this record and all before it in the segment.
    pub max_timestamp: i64,
}

/// Everything known about a segment's contents, kept in memory and saved in the index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    pub entries: Vec<IndexEntry>,
    /// Records in the segment.
    pub record_count: u32,
    /// Offset of the last record, if any.
    pub last_offset: Option<i64>,
    /// Largest timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Bytes of the `.log` file these facts describe.
    pub log_size: u64,
    /// Bytes written since the last entry.
    pub since_entry: u64,
}

impl SegmentIndex {
    pub fn empty() -> Self {
        SegmentIndex {
            entries: Vec::new(),
            record_count: 0,
            last_offset: None,
            max_timestamp: i64::MIN,
            log_size: 0,
            since_entry: 0,
        }
    }

    /// Offset of the first record, if any (entry 0 is always the first record).
    pub fn first_offset(&self, base: i64) -> Option<i64> {
        self.entries.first().map(|e| base + e.rel_offset as i64)
    }

    /// Records that a record was written at the current end of the log.
    pub fn note_record(
        &mut self,
        base: i64,
        offset: i64,
        timestamp: i64,
        len: usize,
        interval: u64,
    ) {
        self.max_timestamp = self.max_timestamp.max(timestamp);
        if self.entries.is_empty() || self.since_entry >= interval {
            // Appends roll, and recovery stops, before a segment passes 4 GiB − 1.
            debug_assert!(self.log_size <= u32::MAX as u64, "position past 32 bits");
            self.entries.push(IndexEntry {
                rel_offset: (offset - base) as u32,
                position: self.log_size as u32,
                max_timestamp: self.max_timestamp,
            });
            self.since_entry = 0;
        }
        self.since_entry += len as u64;
        self.record_count += 1;
        self.last_offset = Some(offset);
        self.log_size += len as u64;
    }

    /// Position to start scanning from to find the first record with offset ≥ `offset`.
    pub fn position_for_offset(&self, base: i64, offset: i64) -> u64 {
        let rel = offset - base;
        if rel <= 0 {
            return 0;
        }
        let rel = rel.min(u32::MAX as i64) as u32;
        let i = self.entries.partition_point(|e| e.rel_offset <= rel);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].position as u64
        }
    }

    /// Position to start scanning from to find the first record with timestamp ≥ `ts`.
    ///
    /// Every record before the returned position has a timestamp below `ts`.
    pub fn position_for_timestamp(&self, ts: i64) -> u64 {
        let i = self.entries.partition_point(|e| e.max_timestamp < ts);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].position as u64
        }
    }

    /// The byte range between the index entries around the record with offset `offset` (or
    /// the last record below it): `(start, end)` positions.
    pub fn interval_for_offset(&self, base: i64, offset: i64) -> (u64, u64) {
        let rel = (offset - base).clamp(0, u32::MAX as i64) as u32;
        let i = self.entries.partition_point(|e| e.rel_offset <= rel);
        let start = if i == 0 {
            0
        } else {
            self.entries[i - 1].position as u64
        };
        let end = self
            .entries
            .get(i)
            .map_or(self.log_size, |e| e.position as u64);
        (start, end)
    }

    /// Serializes the index file.
    pub fn encode(&self, base: i64) -> Vec<u8> {
        let mut b = Vec::with_capacity(INDEX_HEADER_LEN + self.entries.len() * INDEX_ENTRY_LEN);
        b.put_slice(INDEX_MAGIC);
        b.put_u16(INDEX_VERSION);
        b.put_u16(0);
        b.put_i64(base);
        b.put_u64(self.log_size);
        b.put_i64(self.max_timestamp);
        b.put_u32(self.entries.len() as u32);
        b.put_u32(self.record_count);
        b.put_u32(self.last_offset.map_or(0, |o| (o - base) as u32));
        b.put_u32(0); // the CRC, filled in below
        for e in &self.entries {
            b.put_u32(e.rel_offset);
            b.put_u32(e.position);
            b.put_i64(e.max_timestamp);
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..44]), &b[INDEX_HEADER_LEN..]);
        b[44..48].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses an index file written by [`encode`](Self::encode). Returns a reason on any
    /// inconsistency; the caller then rebuilds the index from the log.
    pub fn decode(b: &[u8], base: i64) -> Result<Self, &'static str> {
        if b.len() < INDEX_HEADER_LEN {
            return Err("index shorter than its header");
        }
        if &b[0..4] != INDEX_MAGIC {
            return Err("bad index magic");
        }
        let u16_at = |p: usize| u16::from_be_bytes([b[p], b[p + 1]]);
        let u32_at = |p: usize| u32::from_be_bytes(b[p..p + 4].try_into().expect("4 bytes"));
        let u64_at = |p: usize| u64::from_be_bytes(b[p..p + 8].try_into().expect("8 bytes"));
        if u16_at(4) != INDEX_VERSION {
            return Err("unknown index version");
        }
        if u64_at(8) as i64 != base {
            return Err("index names another base offset");
        }
        let log_size = u64_at(16);
        let max_timestamp = u64_at(24) as i64;
        let count = u32_at(32) as usize;
        let record_count = u32_at(36);
        let last_rel = u32_at(40);
        if b.len() != INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN {
            return Err("index length does not match its entry count");
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..44]), &b[INDEX_HEADER_LEN..]);
        if crc != u32_at(44) {
            return Err("index CRC-32C mismatch");
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let p = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
            let e = IndexEntry {
                rel_offset: u32_at(p),
                position: u32_at(p + 4),
                max_timestamp: u64_at(p + 8) as i64,
            };
            if let Some(prev) = entries.last() {
                let prev: &IndexEntry = prev;
                if e.rel_offset <= prev.rel_offset
                    || e.position <= prev.position
                    || e.max_timestamp < prev.max_timestamp
                {
                    return Err("index entries out of order");
                }
            } else if e.position != 0 {
                return Err("first index entry is not at position 0");
            }
            if e.position as u64 >= log_size
                || e.rel_offset > last_rel
                || e.max_timestamp > max_timestamp
            {
                return Err("index entry beyond the segment's end");
            }
            entries.push(e);
        }
        if (record_count == 0) != entries.is_empty() || (record_count as usize) < entries.len() {
            return Err("index record count disagrees with its entries");
        }
        if record_count == 0 && log_size != 0 {
            return Err("empty index for a non-empty log");
        }
        let last_offset = (record_count > 0).then_some(base + last_rel as i64);
        let since_entry = entries.last().map_or(0, |e| log_size - e.position as u64);
        Ok(SegmentIndex {
            entries,
            record_count,
            last_offset,
            max_timestamp,
            log_size,
            since_entry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> SegmentIndex {
        let mut ix = SegmentIndex::empty();
        // 10 records of 100 bytes at offsets 100, 102, ..., interval 250 → an entry every 3 records.
        let ts = [5, 3, 9, 1, 2, 10, 4, 11, 11, 12];
        for (i, t) in ts.iter().enumerate() {
            ix.note_record(100, 100 + 2 * i as i64, *t, 100, 250);
        }
        ix
    }

    #[test]
    fn entries_are_sparse_and_monotonic() {
        let ix = built();
        let pos: Vec<u32> = ix.entries.iter().map(|e| e.position).collect();
        assert_eq!(pos, vec![0, 300, 600, 900]);
        let maxes: Vec<i64> = ix.entries.iter().map(|e| e.max_timestamp).collect();
        assert_eq!(maxes, vec![5, 9, 10, 12]);
        assert_eq!(ix.record_count, 10);
        assert_eq!(ix.last_offset, Some(118));
    }

    #[test]
    fn offset_lookup_lands_at_or_before_the_record() {
        let ix = built();
        assert_eq!(ix.position_for_offset(100, 0), 0);
        assert_eq!(ix.position_for_offset(100, 105), 0);
        assert_eq!(ix.position_for_offset(100, 106), 300);
        assert_eq!(ix.position_for_offset(100, 117), 600);
        assert_eq!(ix.position_for_offset(100, 1_000), 900);
    }

    #[test]
    fn time_lookup_never_skips_an_earlier_match() {
        let ix = built();
        assert_eq!(ix.position_for_timestamp(0), 0);
        assert_eq!(ix.position_for_timestamp(6), 0); // the record with ts 9 is in the second interval
        assert_eq!(ix.position_for_timestamp(10), 300);
        assert_eq!(ix.position_for_timestamp(12), 600);
    }

    #[test]
    fn file_layout_matches_the_documented_bytes() {
        let mut ix = SegmentIndex::empty();
        ix.note_record(7, 7, 100, 50, 4096);
        ix.note_record(7, 9, 90, 60, 4096);
        let b = ix.encode(7);
        let mut expect = Vec::new();
        expect.extend_from_slice(b"LBIX");
        expect.extend_from_slice(&1u16.to_be_bytes());
        expect.extend_from_slice(&0u16.to_be_bytes());
        expect.extend_from_slice(&7i64.to_be_bytes()); // base offset
        expect.extend_from_slice(&110u64.to_be_bytes()); // log size
        expect.extend_from_slice(&100i64.to_be_bytes()); // max timestamp
        expect.extend_from_slice(&1u32.to_be_bytes()); // entries
        expect.extend_from_slice(&2u32.to_be_bytes()); // records
        expect.extend_from_slice(&2u32.to_be_bytes()); // last offset - base
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&expect),
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100],
        );
        expect.extend_from_slice(&crc.to_be_bytes());
        expect.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100]); // the entry
        assert_eq!(b, expect);
    }

    #[test]
    fn intervals_bracket_the_record() {
        let ix = built();
        assert_eq!(ix.interval_for_offset(100, 100), (0, 300));
        assert_eq!(ix.interval_for_offset(100, 105), (0, 300));
        assert_eq!(ix.interval_for_offset(100, 106), (300, 600));
        assert_eq!(ix.interval_for_offset(100, 118), (900, 1000));
    }

    #[test]
    fn file_round_trip_and_damage_detection() {
        let ix = built();
        let bytes = ix.encode(100);
        let back = SegmentIndex::decode(&bytes, 100).unwrap();
        assert_eq!(back.entries, ix.entries);
        assert_eq!(
            (back.record_count, back.last_offset, back.log_size),
            (10, Some(118), 1000)
        );
        assert!(
            SegmentIndex::decode(&bytes, 0).is_err(),
            "wrong base accepted"
        );
        for byte in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[byte] ^= 0x10;
            assert!(
                SegmentIndex::decode(&bad, 100).is_err(),
                "flip in byte {byte} accepted"
            );
        }
        for cut in 0..bytes.len() {
            assert!(SegmentIndex::decode(&bytes[..cut], 100).is_err());
        }
    }
}
