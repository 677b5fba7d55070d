//! A chunked vector: grows without copying what it holds (no doubling spike),
//! for the message and recipient records.
//! Depends on nothing else in the crate.

/// A vector that grows in fixed chunks: no doubling slack, no large reallocation
/// (and no copy of millions of records under a lock) as the queue grows.
pub struct Slab<T> {
    chunks: Vec<Box<[T]>>,
    len: usize,
}

const CHUNK_BITS: usize = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

impl<T: Copy + Default> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy + Default> Slab<T> {
    /// Number of elements.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }
    /// Element `i`, if in range.
    pub fn get(&self, i: usize) -> Option<&T> {
        if i < self.len {
            Some(&self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)])
        } else {
            None
        }
    }
    /// Grows by `n` default elements.
    pub fn grow(&mut self, n: usize) {
        self.len += n;
        while self.chunks.len() * CHUNK < self.len {
            self.chunks
                .push(vec![T::default(); CHUNK].into_boxed_slice());
        }
    }
    /// Iterates over all elements.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        (0..self.len).map(move |i| &self[i])
    }
    /// Bytes allocated.
    pub fn memory(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<T>() + self.chunks.capacity() * 16
    }
}

impl<T: Copy + Default> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        assert!(i < self.len, "slab index {i} out of range {}", self.len);
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

impl<T: Copy + Default> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        assert!(i < self.len, "slab index {i} out of range {}", self.len);
        &mut self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}
