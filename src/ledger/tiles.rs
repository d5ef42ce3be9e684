//! The ledger as C2SP tlog-tiles (https://c2sp.org/tlog-tiles): hash tiles and entry bundles
//! read straight from the stored hashes and entries, so transparency-log tooling and monitors
//! can mirror and audit it without tiergate's own client. Tiles are height 8 (256 hashes or
//! entries); the N path and the `.p/<W>` suffix of partial tiles are as in the spec.

use anyhow::Context;
use tlog_tiles::{Tile, stored_hash_index};

use crate::store::Store;

/// The spec fixes the tile height at 8.
pub const TILE_HEIGHT: u8 = 8;

/// A tile the spec names: hashes at a level, or a bundle of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePath {
    pub tile: Tile,
    pub entries: bool,
}

impl TilePath {
    /// Parses what follows `tile/` in a tlog-tiles URL: `<L>/<N>[.p/<W>]` or
    /// `entries/<N>[.p/<W>]`.
    pub fn parse(path: &str) -> Result<TilePath, String> {
        let (level, rest) = path.split_once('/').ok_or_else(|| format!("tile: {path:?} is not <level>/<N> or entries/<N>"))?;
        let (entries, level) = match level {
            "entries" => (true, "data"),
            // Level 7 hashes cover 2^56 entries each: no tree gets higher.
            "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" => (false, level),
            _ => return Err(format!("tile: the level {level:?} is neither 0 to 7 nor \"entries\"")),
        };
        // tlog_tiles panics on a width of 0 instead of refusing it.
        if let Some((_, width)) = rest.split_once(".p/")
            && !matches!(width.parse::<u32>(), Ok(1..=255))
        {
            return Err(format!("tile: the width {width:?} of a partial tile is not 1 to 255"));
        }
        // tlog_tiles parses the sumdb form, which names the height as well.
        let tile = Tile::from_path(&format!("tile/{TILE_HEIGHT}/{level}/{rest}")).map_err(|e| format!("tile: {e}"))?;
        Ok(TilePath { tile, entries })
    }

    /// The path in the spec's form (what `parse` reads).
    pub fn to_path(&self) -> String {
        let sumdb = self.tile.path();
        let rest = sumdb.splitn(4, '/').nth(3).unwrap_or_default();
        if self.entries { format!("tile/entries/{rest}") } else { format!("tile/{}/{rest}", self.tile.level()) }
    }

    /// The first leaf after the tile: the tree must have at least this many entries for the
    /// tile to exist (`None` when it lies beyond any tree).
    fn needs_tree_size(&self) -> Option<u64> {
        let covered = self.tile.level_index().checked_mul(1 << TILE_HEIGHT)?.checked_add(u64::from(self.tile.width()))?;
        let leaves_per_hash = u32::from(self.tile.level()) * u32::from(TILE_HEIGHT);
        if leaves_per_hash >= 64 {
            return None;
        }
        covered.checked_mul(1u64 << leaves_per_hash)
    }
}

/// The tile's bytes in a tree of `size` entries, or `None` when the tree does not hold it (yet):
/// the 32-byte hashes side by side, or the entries each prefixed with its length (big-endian
/// 16 bits), as the spec lays them out.
pub async fn read_tile(store: &Store, size: u64, path: TilePath) -> anyhow::Result<Option<Vec<u8>>> {
    match path.needs_tree_size() {
        Some(needed) if needed <= size => {}
        _ => return Ok(None),
    }
    let first = path.tile.level_index() << TILE_HEIGHT;
    let width = u64::from(path.tile.width());
    if path.entries {
        let entries = store.ledger_entries(first as i64, width as i64).await?;
        let mut bundle = Vec::new();
        for (offset, (index, entry)) in entries.iter().enumerate() {
            anyhow::ensure!(*index as u64 == first + offset as u64, "entry {} is missing from the ledger", first + offset as u64);
            let length = u16::try_from(entry.len())
                .map_err(|_| anyhow::anyhow!("entry {index} is {} bytes, more than an entry bundle can hold (65,535)", entry.len()))?;
            bundle.extend_from_slice(&length.to_be_bytes());
            bundle.extend_from_slice(entry.as_bytes());
        }
        anyhow::ensure!(entries.len() as u64 == width, "entries {first} to {} are missing from the ledger", first + width - 1);
        return Ok(Some(bundle));
    }
    let level = path.tile.level() * TILE_HEIGHT;
    let indexes: Vec<i64> = (0..width).map(|i| stored_hash_index(level, first + i) as i64).collect();
    let mut conn = store.pool().acquire().await.context("acquiring connection")?;
    let hashes = Store::ledger_read_hashes(&mut conn, &indexes).await?;
    let mut data = Vec::with_capacity(indexes.len() * 32);
    for index in &indexes {
        data.extend_from_slice(hashes.get(index).with_context(|| format!("stored hash {index} is missing from the ledger"))?);
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_read_and_write_as_the_spec_names_them() {
        for path in ["0/000", "0/x001/234", "1/000.p/17", "entries/x001/234", "entries/000.p/1", "2/x123/x456/789"] {
            let parsed = TilePath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(parsed.to_path(), format!("tile/{path}"));
        }
        let tile = TilePath::parse("0/x001/234.p/17").unwrap();
        assert_eq!((tile.tile.level(), tile.tile.level_index(), tile.tile.width(), tile.entries), (0, 1234, 17, false));
        assert!(TilePath::parse("entries/000").unwrap().entries);
    }

    #[test]
    fn malformed_tile_paths_are_refused_by_name() {
        for path in
            ["", "0", "a/000", "8/000", "99/000", "0/1", "0/000.p/256", "0/000.p/0x", "0/000.p/0", "0/x000/001", "entries/000.p/0", "0/000.p/"]
        {
            assert!(TilePath::parse(path).is_err(), "{path}");
        }
    }

    #[test]
    fn a_tile_exists_once_the_tree_covers_it() {
        assert_eq!(TilePath::parse("0/000.p/5").unwrap().needs_tree_size(), Some(5));
        assert_eq!(TilePath::parse("0/001").unwrap().needs_tree_size(), Some(512));
        assert_eq!(TilePath::parse("1/000.p/2").unwrap().needs_tree_size(), Some(512));
        assert_eq!(TilePath::parse("entries/000").unwrap().needs_tree_size(), Some(256));
    }
}
