//! Buffers that start on a cache line: packed weights, lowered activations and feature
//! maps, which the kernels read and write 64 bytes at a time (a zmm register, a row of
//! an AMX tile). A `Vec` large enough to be mapped by glibc starts 16 bytes past a page,
//! so each of those 64-byte accesses touched two lines.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};

/// One cache line of storage.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

// SAFETY: 64 bytes, no padding, every bit pattern valid.
unsafe impl Zeroable for Line {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl Pod for Line {}

/// A vector of plain values whose first value starts on a 64-byte boundary; the plan's
/// reused buffers (feature maps, scratch) take their first `len` values with `prefix`.
#[derive(Debug, Clone)]
pub struct AlignedVec<T> {
    lines: Vec<Line>,
    len: usize,
    values: PhantomData<T>,
}

impl<T: Pod> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: Pod> AlignedVec<T> {
    /// `len` zero values.
    pub fn zeroed(len: usize) -> Self {
        let lines = (len * size_of::<T>()).div_ceil(size_of::<Line>());
        Self {
            lines: vec![Line([0; 64]); lines],
            len,
            values: PhantomData,
        }
    }

    /// The first `len` values, growing the buffer (with zeros) when it is shorter.
    pub fn prefix(&mut self, len: usize) -> &mut [T] {
        if self.len < len {
            let mut grown = Self::zeroed(len);
            grown[..self.len].copy_from_slice(self);
            *self = grown;
        }
        &mut self[..len]
    }
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_start_on_a_line_and_keep_their_contents_when_grown() {
        let mut values = AlignedVec::<f32>::zeroed(3);
        values.copy_from_slice(&[1.0, 2.0, 3.0]);
        assert_eq!(values.as_ptr() as usize % 64, 0);
        assert_eq!(&values[..], &[1.0, 2.0, 3.0]);
        assert_eq!(values.prefix(2), &[1.0, 2.0]);
        assert_eq!(values.prefix(40)[..4], [1.0, 2.0, 3.0, 0.0]);
        assert_eq!(values.len(), 40);
        assert_eq!(values.as_ptr() as usize % 64, 0);
        let bytes = AlignedVec::<u8>::zeroed(65);
        assert_eq!((bytes.len(), bytes.lines.len()), (65, 2));
        assert_eq!(bytes.as_ptr() as usize % 64, 0);
    }
}
