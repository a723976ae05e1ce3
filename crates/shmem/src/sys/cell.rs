//! Cells of plain data in shared memory, read and written only with atomic accesses, so
//! that a concurrent writer in another process is never a data race in this one.

use std::{
    cell::UnsafeCell,
    mem::{MaybeUninit, size_of},
    sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering, fence},
};

use bytemuck::{CheckedBitPattern, NoUninit, Pod};

use crate::{Placeable, Result};

/// A type a [`Value`](crate::Value) or [`RawValue`](crate::RawValue) can hold: every
/// [`Pod`] type (numbers, arrays of them, `#[derive(Pod, Zeroable)]` structs), and `bool`.
///
/// It is implemented for every type that is [`NoUninit`] (no padding, no pointers) and
/// [`CheckedBitPattern`] (whose valid bit patterns can be checked), which bytemuck provides
/// for `Pod` types and for `bool`. You never implement it yourself.
pub trait Plain: NoUninit + CheckedBitPattern + Send {}

impl<T: NoUninit + CheckedBitPattern + Send> Plain for T {}

/// Whether `T` is read and written with one atomic instruction in a [`PlainCell`].
pub(crate) const fn is_atomic<T>() -> bool {
    matches!(size_of::<T>(), 1 | 2 | 4 | 8)
}

/// A `T` in shared memory, aligned to 8 bytes so that values of 1, 2, 4 or 8 bytes are single
/// atomics; larger ones are copied with a sequence of atomic accesses (and may tear if two
/// processes write at once: callers that need them whole serialise with a lock).
#[repr(C, align(8))]
pub(crate) struct PlainCell<T>(UnsafeCell<T>);

// SAFETY: the value is only reached through atomic copies (`load` / `store`).
unsafe impl<T: Send> Sync for PlainCell<T> {}

// SAFETY: Sync (above); plain data whose loads check the bit pattern; `init` writes it.
unsafe impl<T: Plain> Placeable for PlainCell<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory for a `PlainCell<T>`,
        // whose only field is the `T`.
        unsafe { this.cast::<T>().write(init) };
        Ok(())
    }
}

impl<T: Plain> PlainCell<T> {
    /// Reads the value; `None` if the bytes are not a valid `T` (a `bool` that another
    /// process set to 2). Never `None` for a `Pod` type.
    #[inline]
    pub(crate) fn load(&self) -> Option<T> {
        let mut bits = MaybeUninit::<T::Bits>::zeroed();
        let dst = bits.as_mut_ptr().cast::<u8>();
        let src = self.0.get().cast::<u8>().cast_const();
        if is_atomic::<T>() {
            // SAFETY: the cell holds `size_of::<T>()` bytes, aligned to 8 (`align(8)`).
            let word = unsafe { load_word(src, size_of::<T>()) };
            // SAFETY: `T::Bits` has the size of `T` (CheckedBitPattern's contract), so `dst`
            // has room for `size_of::<T>()` bytes; `word` holds at least that many.
            unsafe { std::ptr::copy_nonoverlapping(word.as_ptr(), dst, size_of::<T>()) };
        } else {
            // SAFETY: the cell is valid for reads of `size_of::<T>()` bytes, and so is `dst`
            // for writes (same size).
            unsafe { copy_in(dst, src, size_of::<T>()) };
        }
        // SAFETY: every byte was written above (or zeroed), and `T::Bits` is valid for any
        // bit pattern.
        let bits = unsafe { bits.assume_init() };
        if !T::is_valid_bit_pattern(&bits) {
            return None;
        }
        // SAFETY: the bits were just checked to be a valid `T`, of the same size.
        Some(unsafe { std::mem::transmute_copy::<T::Bits, T>(&bits) })
    }

    /// Writes the value.
    #[inline]
    pub(crate) fn store(&self, value: &T) {
        let bytes = bytemuck::bytes_of(value);
        let dst = self.0.get().cast::<u8>();
        if is_atomic::<T>() {
            // SAFETY: the cell holds `bytes.len()` bytes, aligned to 8 (`align(8)`).
            unsafe { store_word(dst, bytes) };
        } else {
            // SAFETY: the cell is valid for writes of `bytes.len()` bytes.
            unsafe { copy_out(dst, bytes) };
        }
    }
}

/// A `T` in shared memory that concurrent readers copy while a writer may be writing it:
/// the copies are made of atomic accesses (never a data race) but may be torn, so the
/// caller validates them (a sequence lock).
#[repr(C)]
pub(crate) struct RacyCell<T>(UnsafeCell<T>);

// SAFETY: the value is only reached through atomic copies.
unsafe impl<T: Send> Sync for RacyCell<T> {}

// SAFETY: Sync (above), plain data (any bytes are a valid `T`); `init` writes it.
unsafe impl<T: Pod + Send> Placeable for RacyCell<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory for a `RacyCell<T>`,
        // whose only field is the `T`.
        unsafe { this.cast::<T>().write(init) };
        Ok(())
    }
}

impl<T: Pod> RacyCell<T> {
    /// Copies the value out: relaxed atomic loads, then an acquire fence. Possibly torn.
    pub(crate) fn copy_out(&self) -> T {
        let mut out = T::zeroed();
        let dst = bytemuck::bytes_of_mut(&mut out);
        // SAFETY: the cell is valid for reads of `size_of::<T>()` bytes, `dst` for writes.
        unsafe { copy_in(dst.as_mut_ptr(), self.0.get().cast(), dst.len()) };
        out
    }

    /// Copies `value` in: a release fence, then relaxed atomic stores.
    pub(crate) fn copy_in(&self, value: &T) {
        // SAFETY: the cell is valid for writes of `size_of::<T>()` bytes.
        unsafe { copy_out(self.0.get().cast(), bytemuck::bytes_of(value)) };
    }
}

/// One atomic load of `size` (1, 2, 4 or 8) bytes at `p`; the bytes in memory order.
///
/// # Safety
/// `p` is valid for reads of `size` bytes and aligned to `size`.
#[inline(always)]
unsafe fn load_word(p: *const u8, size: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    let p = p.cast_mut();
    // In each arm: `p` is valid for `size` bytes and aligned to `size` (the caller), so it
    // is a valid atomic of that size. Acquire pairs with the Release of `store_word` in the
    // writer.
    match size {
        1 => {
            // SAFETY: see above.
            out[0] = unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Acquire);
        }
        2 => {
            // SAFETY: see above.
            let v = unsafe { AtomicU16::from_ptr(p.cast()) }.load(Ordering::Acquire);
            out[..2].copy_from_slice(&v.to_ne_bytes());
        }
        4 => {
            // SAFETY: see above.
            let v = unsafe { AtomicU32::from_ptr(p.cast()) }.load(Ordering::Acquire);
            out[..4].copy_from_slice(&v.to_ne_bytes());
        }
        _ => {
            // SAFETY: see above.
            out = unsafe { AtomicU64::from_ptr(p.cast()) }
                .load(Ordering::Acquire)
                .to_ne_bytes();
        }
    }
    out
}

/// One atomic store of `bytes` (1, 2, 4 or 8 of them) at `p`.
///
/// # Safety
/// `p` is valid for writes of `bytes.len()` bytes and aligned to that length.
#[inline(always)]
unsafe fn store_word(p: *mut u8, bytes: &[u8]) {
    let mut w = [0u8; 8];
    w[..bytes.len()].copy_from_slice(bytes);
    // In each arm: as in `load_word`. Release pairs with the Acquire of `load_word`.
    match bytes.len() {
        // SAFETY: see above.
        1 => unsafe { AtomicU8::from_ptr(p) }.store(w[0], Ordering::Release),
        // SAFETY: see above.
        2 => unsafe { AtomicU16::from_ptr(p.cast()) }
            .store(u16::from_ne_bytes([w[0], w[1]]), Ordering::Release),
        // SAFETY: see above.
        4 => unsafe { AtomicU32::from_ptr(p.cast()) }.store(
            u32::from_ne_bytes([w[0], w[1], w[2], w[3]]),
            Ordering::Release,
        ),
        _ => {
            // SAFETY: see above.
            unsafe { AtomicU64::from_ptr(p.cast()) }.store(u64::from_ne_bytes(w), Ordering::Release)
        }
    }
}

/// Reads a `T` at `p` in shared memory another process may be writing: one atomic load for
/// 1-, 2-, 4- and 8-byte types at an address aligned to their size, atomic byte and word
/// copies (possibly torn) otherwise.
///
/// # Safety
/// `p` is valid for reads of `size_of::<T>()` bytes.
pub(crate) unsafe fn read_pod<T: Pod>(p: *const u8) -> T {
    let size = size_of::<T>();
    let mut out = T::zeroed();
    let dst = bytemuck::bytes_of_mut(&mut out);
    if is_atomic::<T>() && (p as usize) % size == 0 {
        // SAFETY: valid for `size` bytes (the caller), aligned to `size` (checked).
        dst.copy_from_slice(&unsafe { load_word(p, size) }[..size]);
    } else {
        // SAFETY: the caller's promise.
        unsafe { copy_in(dst.as_mut_ptr(), p, size) };
    }
    out
}

/// Writes `value` at `p` in shared memory other processes may be reading; see [`read_pod`].
///
/// # Safety
/// `p` is valid for writes of `size_of::<T>()` bytes.
pub(crate) unsafe fn write_pod<T: Pod>(p: *mut u8, value: &T) {
    let bytes = bytemuck::bytes_of(value);
    if is_atomic::<T>() && (p as usize) % bytes.len() == 0 {
        // SAFETY: valid for the bytes (the caller), aligned to their length (checked).
        unsafe { store_word(p, bytes) };
    } else {
        // SAFETY: the caller's promise.
        unsafe { copy_out(p, bytes) };
    }
}

/// Copies `len` bytes from shared memory at `src` to `dst` with relaxed atomic loads, then
/// an acquire fence.
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `len` bytes.
pub(crate) unsafe fn copy_in(dst: *mut u8, src: *const u8, len: usize) {
    let head = src.align_offset(8).min(len);
    let words = (len - head) / 8;
    for i in (0..head).chain(head + words * 8..len) {
        // SAFETY: within the caller's ranges; any address is aligned for a byte.
        let b = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        // SAFETY: within the caller's range.
        unsafe { dst.add(i).write(b) };
    }
    for w in 0..words {
        let off = head + w * 8;
        // SAFETY: within the caller's range, and `src + head` is 8-aligned.
        let v =
            unsafe { AtomicU64::from_ptr(src.add(off).cast_mut().cast()) }.load(Ordering::Relaxed);
        // SAFETY: within the caller's range; an unaligned write.
        unsafe { dst.add(off).cast::<[u8; 8]>().write(v.to_ne_bytes()) };
    }
    // Pairs with the release fence of `copy_out` in the writer.
    fence(Ordering::Acquire);
}

/// Copies `src` into shared memory at `dst`: a release fence, then relaxed atomic stores.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` bytes.
pub(crate) unsafe fn copy_out(dst: *mut u8, src: &[u8]) {
    // Pairs with the acquire fence of `copy_in` in the reader.
    fence(Ordering::Release);
    let head = dst.align_offset(8).min(src.len());
    let words = (src.len() - head) / 8;
    for i in (0..head).chain(head + words * 8..src.len()) {
        // SAFETY: within the caller's range; any address is aligned for a byte.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Ordering::Relaxed);
    }
    for (w, chunk) in src[head..head + words * 8].chunks_exact(8).enumerate() {
        let mut v = [0u8; 8];
        v.copy_from_slice(chunk);
        // SAFETY: within the caller's range, and `dst + head` is 8-aligned.
        unsafe { AtomicU64::from_ptr(dst.add(head + w * 8).cast()) }
            .store(u64::from_ne_bytes(v), Ordering::Relaxed);
    }
}
