//! `Value`, `RawValue` and `Array`: Python's shared ctypes, for plain-old-data types.

use std::{
    any::type_name,
    cell::UnsafeCell,
    fmt,
    marker::PhantomData,
    mem::{align_of, size_of},
    ops::{Deref, DerefMut},
    time::Duration,
};

use bytemuck::Pod;
use ipckit_core::{Deadline, Handle, Handoff};

use crate::{
    Error, Placeable, Result, Segment, Shared,
    shared::{DATA, fingerprint, publish, validate},
    sys::{self, RawMutex, Taken},
};

/// Storage aligned to 8 bytes, so that values of 1, 2, 4 or 8 bytes are single atomics.
#[repr(C, align(8))]
struct Cell<T>(UnsafeCell<T>);

/// A shared value with a built-in lock: Python's `multiprocessing.Value`.
///
/// ```
/// use ipckit_shmem::Value;
///
/// let counter: Value<u64> = Value::create(0)?;
/// *counter.lock()? += 1;            // under the lock: `with v.get_lock(): v.value += 1`
/// counter.store(41);                // lock-free for 1-, 2-, 4- and 8-byte types
/// assert_eq!(counter.load(), 41);
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
pub type Value<T> = Shared<ValueCell<T>>;

/// A shared value without a lock: Python's `multiprocessing.RawValue`.
pub type RawValue<T> = Shared<RawCell<T>>;

/// The contents of a [`Value`]: a robust process-shared lock and the value.
///
/// Accesses under the lock go through a copy that is written back, atomically, when the
/// guard drops, so that the lock-free [`load`](ValueCell::load) and
/// [`store`](ValueCell::store) of atomic-sized values never race with them.
#[repr(C)]
pub struct ValueCell<T> {
    lock: RawMutex,
    value: Cell<T>,
}

/// The contents of a [`RawValue`]: the value alone.
#[repr(C)]
pub struct RawCell<T> {
    value: Cell<T>,
}

// SAFETY: the value is only reached through atomic copies (sys::read_pod / write_pod).
unsafe impl<T: Pod + Send> Sync for ValueCell<T> {}
// SAFETY: as above.
unsafe impl<T: Pod + Send> Sync for RawCell<T> {}

// SAFETY: Sync (above), a pthread mutex and plain data; `init` initialises both.
unsafe impl<T: Pod + Send> Placeable for ValueCell<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> std::io::Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory for the whole cell.
        unsafe {
            RawMutex::init(&raw mut (*this).lock)?;
            (&raw mut (*this).value).cast::<T>().write(init);
        }
        Ok(())
    }
}

// SAFETY: Sync (above) and plain data; `init` writes it.
unsafe impl<T: Pod + Send> Placeable for RawCell<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> std::io::Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory.
        unsafe { (&raw mut (*this).value).cast::<T>().write(init) };
        Ok(())
    }
}

/// Whether `T` is read and written with one atomic instruction in a [`Cell`].
const fn is_atomic<T>() -> bool {
    matches!(size_of::<T>(), 1 | 2 | 4 | 8)
}

impl<T: Pod> ValueCell<T> {
    fn lock_deadline(&self, deadline: Deadline) -> Result<ValueGuard<'_, T>> {
        let taken = self.lock.lock(deadline)?;
        // SAFETY: the cell is aligned and valid for T; other processes write it only under
        // the lock we hold, or with atomic stores of the same width.
        let copy = unsafe { sys::read_pod(self.value.0.get()) };
        Ok(ValueGuard {
            cell: self,
            copy,
            holder_died: taken == Taken::FromDeadHolder,
            _not_send: PhantomData,
        })
    }

    /// Locks the value (Python's `get_lock()`), waiting as long as another holder keeps it.
    /// A holder that died hands the lock over ([`ValueGuard::previous_holder_died`]).
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        self.lock_deadline(Deadline::Never)
    }

    /// Locks the value, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it stayed locked.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>> {
        self.lock_deadline(Deadline::after(timeout))
    }

    /// Reads the value: lock-free for types of 1, 2, 4 or 8 bytes, under the lock otherwise.
    ///
    /// # Panics
    /// For larger types, if the lock fails (which only an OS error can make it do).
    pub fn load(&self) -> T {
        if is_atomic::<T>() {
            // SAFETY: aligned to 8, so one atomic load of T's width.
            unsafe { sys::read_pod(self.value.0.get()) }
        } else {
            *self.lock().expect("value lock")
        }
    }

    /// Writes the value: lock-free for types of 1, 2, 4 or 8 bytes, under the lock otherwise.
    ///
    /// # Panics
    /// For larger types, if the lock fails (which only an OS error can make it do).
    pub fn store(&self, value: T) {
        if is_atomic::<T>() {
            // SAFETY: aligned to 8, so one atomic store of T's width.
            unsafe { sys::write_pod(self.value.0.get(), &value) }
        } else {
            *self.lock().expect("value lock") = value;
        }
    }
}

impl<T: Pod> RawCell<T> {
    /// Reads the value without a lock. Atomic for types of 1, 2, 4 or 8 bytes; larger ones
    /// may be torn by a concurrent `store` (use [`Value`] or a `SeqLock` for those).
    pub fn load(&self) -> T {
        // SAFETY: the cell is aligned and valid for T.
        unsafe { sys::read_pod(self.value.0.get()) }
    }

    /// Writes the value without a lock; see [`load`](RawCell::load).
    pub fn store(&self, value: T) {
        // SAFETY: the cell is aligned and valid for T.
        unsafe { sys::write_pod(self.value.0.get(), &value) }
    }
}

/// The locked value of a [`Value`]; writes back and unlocks when dropped.
pub struct ValueGuard<'a, T: Pod> {
    cell: &'a ValueCell<T>,
    copy: T,
    holder_died: bool,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> ValueGuard<'_, T> {
    /// Whether the previous holder died holding the lock.
    pub fn previous_holder_died(&self) -> bool {
        self.holder_died
    }
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.copy
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.copy
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: aligned and valid for T; we hold the lock.
        unsafe { sys::write_pod(self.cell.value.0.get(), &self.copy) };
        // SAFETY: this guard exists only while this thread holds the lock.
        unsafe { self.cell.lock.unlock() };
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueGuard")
            .field("value", &self.copy)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for ValueCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueCell")
            .field("type", &type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for RawCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCell")
            .field("type", &type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// Where an array's lock and elements start in its segment.
const ARRAY_LOCK: usize = DATA;
const ARRAY_ELEMS: usize = 2 * DATA;

/// A shared array of plain-old-data elements with a built-in lock: Python's
/// `multiprocessing.Array`.
///
/// ```
/// use ipckit_shmem::Array;
///
/// let scores: Array<u32> = Array::from_slice(&[0, 0, 0])?;
/// scores.set(1, 7)?;
/// scores.lock()?[2] += 3;            // many updates under one lock
/// assert_eq!(scores.to_vec()?, [0, 7, 3]);
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
pub struct Array<T> {
    seg: Segment,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod + Send> Array<T> {
    /// An array of `len` zeroes in an anonymous segment.
    ///
    /// # Errors
    /// [`Error::Io`] if the memory is refused.
    pub fn create(len: usize) -> Result<Self> {
        Self::init_in(Segment::create(Self::bytes(len))?, len)
    }

    /// An array of `len` zeroes in a named segment with a fresh unique name.
    ///
    /// # Errors
    /// [`Error::Io`] if the memory is refused.
    pub fn create_named(len: usize) -> Result<Self> {
        Self::init_in(Segment::create_named(Self::bytes(len))?, len)
    }

    /// An array holding a copy of `items`, in an anonymous segment.
    ///
    /// # Errors
    /// [`Error::Io`] if the memory is refused.
    pub fn from_slice(items: &[T]) -> Result<Self> {
        let a = Self::create(items.len())?;
        a.lock()?.copy_from_slice(items);
        Ok(a)
    }

    fn bytes(len: usize) -> usize {
        ARRAY_ELEMS + len * size_of::<T>()
    }

    fn init_in(seg: Segment, len: usize) -> Result<Self> {
        const {
            assert!(
                align_of::<T>() <= DATA,
                "alignment above 64 bytes is not supported"
            )
        };
        // SAFETY: the fresh segment is zero-filled, page-aligned, large enough, unshared.
        unsafe { RawMutex::init(seg.as_ptr().add(ARRAY_LOCK).cast())? };
        publish(&seg, fingerprint::<Array<T>>(), len * size_of::<T>());
        Ok(Array {
            seg,
            len,
            _t: PhantomData,
        })
    }

    /// Opens an array that another process created with [`create_named`](Array::create_named).
    ///
    /// # Errors
    /// As [`Shared::open`].
    pub fn open(name: &str) -> Result<Self> {
        Self::check(Segment::open(name)?)
    }

    fn check(seg: Segment) -> Result<Self> {
        let len = seg.len().saturating_sub(ARRAY_ELEMS) / size_of::<T>().max(1);
        validate(
            &seg,
            fingerprint::<Array<T>>(),
            len * size_of::<T>(),
            type_name::<Array<T>>(),
        )?;
        Ok(Array {
            seg,
            len,
            _t: PhantomData,
        })
    }

    /// Another handle on the same array, not the owner of its name; hand it to a child.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Array {
            seg: self.seg.try_clone()?,
            len: self.len,
            _t: PhantomData,
        })
    }

    fn raw_lock(&self) -> &RawMutex {
        // SAFETY: initialised by `init_in` (or validated as such), aligned, lives as long as
        // the segment's mapping.
        unsafe { &*self.seg.as_ptr().add(ARRAY_LOCK).cast::<RawMutex>() }
    }

    fn lock_deadline(&self, deadline: Deadline) -> Result<ArrayGuard<'_, T>> {
        let taken = self.raw_lock().lock(deadline)?;
        Ok(ArrayGuard {
            array: self,
            holder_died: taken == Taken::FromDeadHolder,
            _not_send: PhantomData,
        })
    }

    /// Locks the whole array, waiting as long as another holder keeps it.
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>> {
        self.lock_deadline(Deadline::Never)
    }

    /// Locks the whole array, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it stayed locked.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ArrayGuard<'_, T>> {
        self.lock_deadline(Deadline::after(timeout))
    }

    /// Element `index`, read under the lock.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the end.
    pub fn get(&self, index: usize) -> Result<T> {
        self.bounds(index)?;
        Ok(self.lock()?[index])
    }

    /// Sets element `index`, under the lock.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the end.
    pub fn set(&self, index: usize, value: T) -> Result<()> {
        self.bounds(index)?;
        self.lock()?[index] = value;
        Ok(())
    }

    /// A copy of every element, read under the lock.
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }

    fn bounds(&self, index: usize) -> Result<()> {
        if index < self.len {
            Ok(())
        } else {
            Err(Error::OutOfBounds {
                offset: index,
                end: index + 1,
                len: self.len,
            })
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name, for a named array.
    pub fn name(&self) -> Option<&str> {
        self.seg.name()
    }
}

impl<T> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("len", &self.len)
            .field("segment", &self.seg)
            .finish()
    }
}

impl<T: Pod + Send> Handle for Array<T> {
    fn into_handoff(self) -> Handoff {
        self.seg.into_handoff()
    }

    fn from_handoff(h: Handoff) -> ipckit_core::Result<Self> {
        Ok(Self::check(Segment::from_handoff(h)?)?)
    }
}

/// The locked elements of an [`Array`]; unlocks when dropped.
pub struct ArrayGuard<'a, T: Pod + Send> {
    array: &'a Array<T>,
    holder_died: bool,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod + Send> ArrayGuard<'_, T> {
    /// Whether the previous holder died holding the lock.
    pub fn previous_holder_died(&self) -> bool {
        self.holder_died
    }
}

impl<T: Pod + Send> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the elements are initialised (zeroes are valid Pod), aligned (page +
        // 128), in bounds; every access to them in any process happens under the lock we hold.
        unsafe {
            std::slice::from_raw_parts(
                self.array.seg.as_ptr().add(ARRAY_ELEMS).cast(),
                self.array.len,
            )
        }
    }
}

impl<T: Pod + Send> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and the lock makes this the only access.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.array.seg.as_ptr().add(ARRAY_ELEMS).cast(),
                self.array.len,
            )
        }
    }
}

impl<T: Pod + Send> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard exists only while this thread holds the lock.
        unsafe { self.array.raw_lock().unlock() }
    }
}

impl<T: Pod + Send + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
