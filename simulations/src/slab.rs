//! A slab with generation-checked keys: in-flight operations and requests
//! live here, and a late reply or timer for a finished one finds nothing
//! (instead of a newer entry that reused the slot).

/// A key into a [`Slab`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlabKey {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
enum Entry<T> {
    Occupied { generation: u32, value: T },
    Vacant { generation: u32 },
}

/// A vector of entries reused through a free list (LIFO, so deterministic).
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value`.
    pub fn insert(&mut self, value: T) -> SlabKey {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            let Entry::Vacant { generation } = *entry else {
                panic!("free list points at an occupied entry");
            };
            let generation = generation.wrapping_add(1);
            *entry = Entry::Occupied { generation, value };
            return SlabKey { index, generation };
        }
        let index = u32::try_from(self.entries.len()).expect("fewer than 2^32 entries");
        self.entries.push(Entry::Occupied {
            generation: 0,
            value,
        });
        SlabKey {
            index,
            generation: 0,
        }
    }

    /// The value under `key`, if it is still there.
    pub fn get(&self, key: SlabKey) -> Option<&T> {
        match self.entries.get(key.index as usize)? {
            Entry::Occupied { generation, value } if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    /// The value under `key`, if it is still there.
    pub fn get_mut(&mut self, key: SlabKey) -> Option<&mut T> {
        match self.entries.get_mut(key.index as usize)? {
            Entry::Occupied { generation, value } if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    /// Takes the value under `key` out, if it is still there.
    pub fn remove(&mut self, key: SlabKey) -> Option<T> {
        let entry = self.entries.get_mut(key.index as usize)?;
        match entry {
            Entry::Occupied { generation, .. } if *generation == key.generation => {
                let vacant = Entry::Vacant {
                    generation: key.generation,
                };
                let Entry::Occupied { value, .. } = std::mem::replace(entry, vacant) else {
                    unreachable!("matched as occupied");
                };
                self.free.push(key.index);
                self.len -= 1;
                Some(value)
            }
            _ => None,
        }
    }

    /// Drops the value under `key` in place (no move of a large value), if it
    /// is still there.
    pub fn free(&mut self, key: SlabKey) {
        if let Some(entry) = self.entries.get_mut(key.index as usize) {
            if matches!(entry, Entry::Occupied { generation, .. } if *generation == key.generation)
            {
                *entry = Entry::Vacant {
                    generation: key.generation,
                };
                self.free.push(key.index);
                self.len -= 1;
            }
        }
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_key_finds_nothing() {
        let mut slab = Slab::default();
        let a = slab.insert("a");
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b");
        assert_ne!(a, b, "the slot is reused with a new generation");
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
        assert!(!slab.is_empty());
    }
}
