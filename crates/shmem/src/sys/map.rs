//! A shared mapping of a file, and every way of reaching its bytes: bounds-checked copies,
//! plain-old-data records at offsets, objects placed in it, and slices under a lock.

use std::{
    fs::File,
    io,
    marker::PhantomData,
    mem::{align_of, size_of},
    ops::{Deref, DerefMut},
    ptr::NonNull,
    sync::Arc,
};

use bytemuck::Pod;
use ipckit_core::Deadline;
use memmap2::MmapRaw;

use super::{
    cell::{copy_in, copy_out, read_pod, write_pod},
    mutex::{RawGuard, RawMutex},
};
use crate::{Error, Placeable, Result};

/// A shared mapping of a file (a memfd, a POSIX shared-memory object, a regular file).
#[derive(Debug)]
pub(crate) struct Mapping {
    map: Arc<MmapRaw>,
    pub(crate) file: File,
    /// Made by this handle and not yet published: objects may be placed in it.
    fresh: bool,
}

impl Mapping {
    /// Maps `file` whole. `fresh`: this process just created it, nobody else uses it yet.
    pub(crate) fn new(file: File, fresh: bool) -> io::Result<Self> {
        Ok(Mapping {
            map: Arc::new(MmapRaw::map_raw(&file)?),
            file,
            fresh,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }

    /// The address of `len` bytes at `offset`, aligned to `align`.
    fn at(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => {}
            end => {
                return Err(Error::OutOfBounds {
                    offset,
                    end: end.unwrap_or(usize::MAX),
                    len: self.len(),
                });
            }
        }
        // The mapping is page-aligned, so alignment is the offset's.
        if (self.as_ptr() as usize + offset) % align != 0 {
            return Err(Error::Misaligned { offset, align });
        }
        Ok(self.as_ptr().wrapping_add(offset))
    }

    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let p = self.at(offset, buf.len(), 1)?;
        // SAFETY: the range lies within the mapping (checked), which lives as long as `self`.
        unsafe { copy_in(buf.as_mut_ptr(), p, buf.len()) };
        Ok(())
    }

    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let p = self.at(offset, data.len(), 1)?;
        // SAFETY: the range lies within the mapping (checked), which lives as long as `self`.
        unsafe { copy_out(p, data) };
        Ok(())
    }

    pub(crate) fn read_at<T: Pod>(&self, offset: usize) -> Result<T> {
        let p = self.at(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: in bounds (checked), within a mapping that lives as long as `self`.
        Ok(unsafe { read_pod(p) })
    }

    pub(crate) fn write_at<T: Pod>(&self, offset: usize, value: &T) -> Result<()> {
        let p = self.at(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: in bounds (checked), within a mapping that lives as long as `self`.
        unsafe { write_pod(p, value) };
        Ok(())
    }

    /// Initialises a `T` at `offset` of a mapping this process just made.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`], [`Error::AlreadyPublished`] for a
    /// mapping that others may already use, or what `T`'s initialisation fails with.
    pub(crate) fn place<T: Placeable>(&mut self, offset: usize, init: T::Init) -> Result<()> {
        if !self.fresh {
            return Err(Error::AlreadyPublished);
        }
        let p = self.at(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: aligned and in bounds (checked); the mapping is fresh (created by this
        // handle, zero-filled, not yet published, and `&mut self` means no `&T` into it is
        // alive), so nobody else reaches these bytes.
        unsafe { T::init(p.cast(), init) }
    }

    /// Ends the time objects may be placed: others may now reach the mapping.
    pub(crate) fn publish(&mut self) {
        self.fresh = false;
    }

    /// The `T` at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub(crate) fn object<T: Placeable>(&self, offset: usize) -> Result<&T> {
        let p = self.at(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: aligned and in bounds (checked); `Placeable` promises that `&T` is sound
        // over bytes that other processes use at the same time, whatever a cooperating
        // process left in them; the reference lives as long as the mapping.
        Ok(unsafe { &*p.cast::<T>() })
    }

    /// The `T` at `offset`, as a handle that keeps the mapping alive.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub(crate) fn object_ref<T: Placeable>(&self, offset: usize) -> Result<ObjectRef<T>> {
        let p = self.at(offset, size_of::<T>(), align_of::<T>())?;
        Ok(ObjectRef {
            ptr: NonNull::new(p.cast()).ok_or(Error::Misaligned { offset, align: 1 })?,
            _map: Arc::clone(&self.map),
        })
    }

    /// Locks the mutex at `lock` and gives the `len` elements at `offset`, which every
    /// process reaches only under that lock.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`], or what the lock fails with.
    pub(crate) fn lock_elements<T: Pod>(
        &self,
        lock: usize,
        offset: usize,
        len: usize,
        deadline: Deadline,
    ) -> Result<SliceGuard<'_, T>> {
        let bytes = len.checked_mul(size_of::<T>()).ok_or(Error::OutOfBounds {
            offset,
            end: usize::MAX,
            len: self.len(),
        })?;
        let elems = self.at(offset, bytes, align_of::<T>())?;
        if offset < lock + size_of::<RawMutex>() && lock < offset + bytes {
            return Err(Error::OutOfBounds {
                offset,
                end: offset + bytes,
                len: lock,
            });
        }
        let raw = self.object::<RawMutex>(lock)?.lock(deadline)?;
        Ok(SliceGuard {
            raw,
            elems: elems.cast(),
            len,
            _t: PhantomData,
        })
    }
}

/// Elements of a mapping, reached while their lock is held; unlocks when dropped.
pub(crate) struct SliceGuard<'a, T> {
    raw: RawGuard<'a>,
    elems: *mut T,
    len: usize,
    _t: PhantomData<&'a mut [T]>,
}

impl<T> SliceGuard<'_, T> {
    /// Whether the previous holder died holding the lock.
    pub(crate) fn previous_holder_died(&self) -> bool {
        self.raw.previous_holder_died()
    }
}

impl<T> Deref for SliceGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the elements are in bounds, aligned, apart from the lock, and plain data
        // (any bytes are valid, checked at `lock_elements`); every process reaches them only
        // under the lock this guard holds.
        unsafe { std::slice::from_raw_parts(self.elems, self.len) }
    }
}

impl<T> DerefMut for SliceGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only access in this thread.
        unsafe { std::slice::from_raw_parts_mut(self.elems, self.len) }
    }
}

/// A [`Placeable`] `T` in a mapping, checked once to be in bounds and aligned; the mapping
/// lives as long as this handle.
pub(crate) struct ObjectRef<T> {
    ptr: NonNull<T>,
    _map: Arc<MmapRaw>,
}

// SAFETY: a shared reference to `T` in memory this handle keeps mapped: sendable and
// shareable between threads exactly when `&T` is (`T: Sync`).
unsafe impl<T: Sync> Send for ObjectRef<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for ObjectRef<T> {}

impl<T: Placeable> Deref for ObjectRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: in bounds and aligned (checked by `object_ref`), in a mapping `_map` keeps
        // alive; `Placeable` promises `&T` is sound over bytes other processes use.
        unsafe { self.ptr.as_ref() }
    }
}
