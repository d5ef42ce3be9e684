//! A tlog `HashReader` over hashes fetched in advance that records what else it was asked for.

use std::{cell::RefCell, collections::HashMap};

use tlog_tiles::{Error, Hash, HashReader};

pub struct PrefetchedHashes<'a> {
    known: &'a HashMap<u64, Hash>,
    missing: RefCell<Vec<u64>>,
}

impl<'a> PrefetchedHashes<'a> {
    pub fn new(known: &'a HashMap<u64, Hash>) -> Self {
        PrefetchedHashes { known, missing: RefCell::new(Vec::new()) }
    }

    pub fn take_missing(&self) -> Vec<u64> {
        self.missing.take()
    }
}

impl HashReader for PrefetchedHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, Error> {
        let found: Option<Vec<Hash>> = indexes.iter().map(|i| self.known.get(i).copied()).collect();
        match found {
            Some(hashes) => Ok(hashes),
            None => {
                self.missing.borrow_mut().extend(indexes.iter().filter(|i| !self.known.contains_key(i)));
                Err(Error::IndexesNotInTree)
            }
        }
    }
}
