//! The `Placeable` contract, and the standard types that keep it.

use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize,
};

use crate::Result;

/// A type that can live in shared memory and be used from several processes at once.
///
/// This crate's atomics, locks, cells and tuples of them are `Placeable`; a type of your own
/// made of them (a `#[repr(C)]` struct of atomics, say) can be too, with an `unsafe impl`.
///
/// # Safety
/// An implementor promises that:
/// - every access through `&Self` stays sound while other processes access the same bytes
///   (all mutation goes through atomics, or through cells only touched under a
///   process-shared lock of `Self`), whatever bytes a cooperating process leaves there;
/// - it holds no pointers, references or handles (they mean nothing in another process);
/// - after [`init`](Placeable::init) on zero-filled memory, the bytes are a valid `Self`.
pub unsafe trait Placeable: Sync {
    /// What the creator gives to initialise it.
    type Init;

    /// Initialises `Self` in place.
    ///
    /// # Safety
    /// `this` is aligned, valid for writes of `size_of::<Self>()` zero-filled bytes, and no
    /// other thread or process can reach it yet.
    ///
    /// # Errors
    /// What the system's initialisation calls fail with, or
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) for an `init` that makes no
    /// valid `Self`.
    unsafe fn init(this: *mut Self, init: Self::Init) -> Result<()>;
}

macro_rules! atomics {
    ($($a:ty => $v:ty),*) => {$(
        // SAFETY: an atomic is sound to share; it holds no pointers; `init` stores its value.
        unsafe impl Placeable for $a {
            type Init = $v;

            unsafe fn init(this: *mut Self, init: $v) -> Result<()> {
                // SAFETY: the caller gives aligned, writable, unshared memory.
                unsafe { this.write(<$a>::new(init)) };
                Ok(())
            }
        }
    )*};
}

atomics!(AtomicBool => bool, AtomicU8 => u8, AtomicU32 => u32, AtomicU64 => u64, AtomicUsize => usize, AtomicI32 => i32, AtomicI64 => i64);

macro_rules! tuples {
    ($(($($t:ident $i:tt),*)),*) => {$(
        // SAFETY: a tuple of placeable parts is placeable: each part keeps its promise and
        // is initialised in its own place.
        unsafe impl<$($t: Placeable),*> Placeable for ($($t,)*) {
            type Init = ($($t::Init,)*);

            unsafe fn init(this: *mut Self, init: Self::Init) -> Result<()> {
                // SAFETY: each field lies within the caller's memory, aligned for itself.
                $(unsafe { $t::init(&raw mut (*this).$i, init.$i)? };)*
                Ok(())
            }
        }
    )*};
}

tuples!((A 0, B 1), (A 0, B 1, C 2), (A 0, B 1, C 2, D 3));
