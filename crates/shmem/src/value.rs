//! `Value`, `RawValue` and `Array`: Python's shared ctypes, for plain-old-data types.

use std::{any::type_name, fmt, marker::PhantomData, mem::size_of, time::Duration};

use bytemuck::Pod;
use ipckit_core::{Deadline, Handle, Handoff};

use crate::{
    Error, Placeable, Plain, Result, Segment, Shared,
    shared::{DATA, fingerprint, publish, validate},
    sys::{Kind, PlainCell, RawGuard, RawMutex, SliceGuard, is_atomic},
};

/// A shared value with a built-in lock: Python's `multiprocessing.Value`.
///
/// ```
/// use ipckit_shmem::Value;
///
/// let counter: Value<u64> = Value::create(0)?;
/// counter.store(41)?;                 // lock-free for 1-, 2-, 4- and 8-byte types
/// {
///     let guard = counter.lock()?;    // `with counter.get_lock():`
///     guard.update(|v| v + 1)?;       //     `counter.value += 1`
///     assert_eq!(counter.load()?, 42); // a read under the lock sees the latest value
/// }
/// assert_eq!(counter.load()?, 42);
///
/// let flag: Value<bool> = Value::create(false)?; // Python's `Value(c_bool)`
/// flag.store(true)?;
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// **The rule: the guard is a lock, not a copy.** Everything reads and writes the one
/// shared value, at once: [`ValueGuard::get`], [`ValueGuard::set`] and
/// [`ValueGuard::update`] under the lock, [`load`](ValueCell::load) and
/// [`store`](ValueCell::store) anywhere. No write is held back or written over when a guard
/// drops, and a read under the lock sees the latest write, from any process. The lock is
/// re-entrant, as Python's (an `RLock`): the holder may call `load`, `store` or `lock`
/// again. What the lock buys is exclusion *among lockers*: `guard.update(..)` is a
/// read-modify-write no other locker can interleave with. `load` and `store` of 1-, 2-, 4-
/// and 8-byte types are single atomic instructions that do not wait for the lock (the
/// reason to have them); a `store` that must not land between a locker's read and write
/// takes the lock (`v.lock()?.set(x)`). Larger types are always read and written under the
/// lock, so they never tear.
///
/// Your own type goes in a `Value` if it is [`Pod`](crate::Pod): `#[repr(C)]`, no padding,
/// no pointers, every bit pattern valid. Derive it, through this crate's re-export:
///
/// ```
/// use ipckit_shmem::{Pod, Value, Zeroable};
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "ipckit_shmem::bytemuck")]
/// struct Point {
///     x: f32,
///     y: f32,
/// }
///
/// let p = Value::create(Point { x: 1.0, y: 2.0 })?;
/// p.lock()?.update(|p| Point { x: p.x + 1.0, ..p })?;
/// assert_eq!(p.load()?, Point { x: 2.0, y: 2.0 });
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with `Value::create(v)`, `Value::create_named(v)`, `Value::create_at(name,
///   v)`; `Value::open(name)` (it is a [`Shared`], so it has `Shared`'s constructors).
/// - **Share with a child**: `Command::new(..).handle("counter", counter.try_clone()?)`; the
///   child takes it with `ctx.handle::<Value<u64>>("counter")?`.
/// - **A dead holder**: the lock is robust. When a holder dies, even by SIGKILL, the next
///   `lock` gets it and [`ValueGuard::previous_holder_died`] says so; every write the dead
///   holder made is in the value (writes are never deferred to the guard's drop).
pub type Value<T> = Shared<ValueCell<T>>;

/// A shared value without a lock: Python's `multiprocessing.RawValue`.
///
/// Created, shared and opened as [`Value`]; `load` and `store` are atomic for 1-, 2-, 4-
/// and 8-byte types, and larger values may tear under concurrent stores (use a `Value` or a
/// [`SeqLock`](crate::SeqLock) for those). A dead writer leaves the last value it stored.
pub type RawValue<T> = Shared<RawCell<T>>;

/// The contents of a [`Value`]: a robust, re-entrant process-shared lock and the value.
#[repr(C)]
pub struct ValueCell<T> {
    lock: RawMutex,
    value: PlainCell<T>,
}

/// The contents of a [`RawValue`]: the value alone.
#[repr(transparent)]
pub struct RawCell<T> {
    value: PlainCell<T>,
}

// SAFETY: a pthread mutex and a plain cell, each keeping the contract and initialised in
// its own place.
unsafe impl<T: Plain> Placeable for ValueCell<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory for the whole cell;
        // each field lies within it, aligned for itself.
        unsafe {
            RawMutex::init(&raw mut (*this).lock, Kind::Recursive)?;
            PlainCell::init(&raw mut (*this).value, init)
        }
    }
}

// SAFETY: a transparent wrapper of `PlainCell<T>`, which keeps the contract.
unsafe impl<T: Plain> Placeable for RawCell<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller's promise, for the one field at the same address.
        unsafe { PlainCell::init(this.cast(), init) }
    }
}

/// The value, or the error saying its bytes are not a `T`.
#[inline]
fn valid<T>(v: Option<T>) -> Result<T> {
    v.ok_or_else(|| Error::InvalidValue(type_name::<T>()))
}

impl<T: Plain> ValueCell<T> {
    fn lock_deadline(&self, deadline: Deadline) -> Result<ValueGuard<'_, T>> {
        Ok(ValueGuard {
            cell: self,
            raw: self.lock.lock(deadline)?,
        })
    }

    /// Locks the value (Python's `get_lock()`), waiting as long as another holder keeps it;
    /// at once if this thread holds it already (the lock is re-entrant).
    ///
    /// # Errors
    /// [`Error::Io`] only if the lock's memory was damaged.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        self.lock_deadline(Deadline::Never)
    }

    /// Locks the value if it is free now (or this thread holds it).
    ///
    /// # Errors
    /// [`Error::Timeout`] if another holder has it.
    pub fn try_lock(&self) -> Result<ValueGuard<'_, T>> {
        self.lock_deadline(Deadline::Now)
    }

    /// Locks the value, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it stayed locked.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>> {
        self.lock_deadline(Deadline::after(timeout))
    }

    /// Reads the value (Python's `v.value`): one atomic load for types of 1, 2, 4 or 8
    /// bytes, under the lock otherwise.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if another process left bytes that are no `T` (a `bool`
    /// holding 2); for larger types, what [`lock`](ValueCell::lock) fails with.
    #[inline]
    pub fn load(&self) -> Result<T> {
        if is_atomic::<T>() {
            valid(self.value.load())
        } else {
            self.lock()?.get()
        }
    }

    /// Writes the value (Python's `v.value = x`): one atomic store for types of 1, 2, 4 or
    /// 8 bytes, under the lock otherwise.
    ///
    /// # Errors
    /// Never for types of 1, 2, 4 or 8 bytes; for larger ones what
    /// [`lock`](ValueCell::lock) fails with.
    #[inline]
    pub fn store(&self, value: T) -> Result<()> {
        if is_atomic::<T>() {
            self.value.store(&value);
        } else {
            self.lock()?.set(value);
        }
        Ok(())
    }
}

impl<T: Plain> RawCell<T> {
    /// Reads the value without a lock. Atomic for types of 1, 2, 4 or 8 bytes; larger ones
    /// may be torn by a concurrent `store` (use [`Value`] or a `SeqLock` for those).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if another process left bytes that are no `T`.
    pub fn load(&self) -> Result<T> {
        valid(self.value.load())
    }

    /// Writes the value without a lock; see [`load`](RawCell::load).
    pub fn store(&self, value: T) {
        self.value.store(&value);
    }
}

/// A hold of a [`Value`]'s lock: reads and writes go to the shared value itself, at once
/// (see [`Value`]'s rule); unlocks when dropped. Not `Send`.
pub struct ValueGuard<'a, T> {
    cell: &'a ValueCell<T>,
    raw: RawGuard<'a>,
}

impl<T: Plain> ValueGuard<'_, T> {
    /// Whether the previous holder died holding the lock.
    pub fn previous_holder_died(&self) -> bool {
        self.raw.previous_holder_died()
    }

    /// The latest value.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] if another process left bytes that are no `T`.
    pub fn get(&self) -> Result<T> {
        valid(self.cell.value.load())
    }

    /// Writes the value, at once.
    pub fn set(&self, value: T) {
        self.cell.value.store(&value);
    }

    /// Replaces the value with `f` of it, and returns the new value: `v.value += 1` under
    /// the lock is `guard.update(|v| v + 1)`.
    ///
    /// # Errors
    /// As [`get`](ValueGuard::get).
    pub fn update(&self, f: impl FnOnce(T) -> T) -> Result<T> {
        let new = f(self.get()?);
        self.set(new);
        Ok(new)
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueGuard")
            .field("value", &self.cell.value.load())
            .field("previous_holder_died", &self.previous_holder_died())
            .finish()
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
///
/// Every access, in every process, is under the array's lock: [`get`](Array::get),
/// [`set`](Array::set) and [`to_vec`](Array::to_vec) take it for one call, a guard from
/// [`lock`](Array::lock) for as long as it lives (it dereferences to `[T]`).
///
/// - **Create** with [`Array::create`] (zeroes), [`Array::from_slice`],
///   [`Array::create_named`] or [`Array::create_at`]; [`Array::open`] by name.
/// - **Share with a child**: `Command::new(..).handle("scores", scores.try_clone()?)`; the
///   child takes it with `ctx.handle::<Array<u32>>("scores")?`.
/// - **A dead holder**: the lock is robust, as [`Mutex`](crate::Mutex)'s: the next `lock`
///   gets it and [`ArrayGuard::previous_holder_died`] says so; the elements hold whatever
///   the dead holder wrote. Locking twice in one thread is [`Error::WouldDeadlock`].
pub struct Array<T> {
    seg: Segment,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod + Send> Array<T> {
    /// An array of `len` zeroes in an anonymous segment.
    ///
    /// # Errors
    /// [`Error::Os`] if the memory is refused.
    pub fn create(len: usize) -> Result<Self> {
        Self::init_in(Segment::create(Self::bytes(len)?)?, len)
    }

    /// An array of `len` zeroes in a named segment with a fresh unique name.
    ///
    /// # Errors
    /// [`Error::Os`] if the memory is refused.
    pub fn create_named(len: usize) -> Result<Self> {
        Self::init_in(Segment::create_named(Self::bytes(len)?)?, len)
    }

    /// An array of `len` zeroes in a named segment called `name`.
    ///
    /// # Errors
    /// As [`Segment::create_at`].
    pub fn create_at(name: &str, len: usize) -> Result<Self> {
        Self::init_in(Segment::create_at(name, Self::bytes(len)?)?, len)
    }

    /// An array holding a copy of `items`, in an anonymous segment.
    ///
    /// # Errors
    /// [`Error::Os`] if the memory is refused.
    pub fn from_slice(items: &[T]) -> Result<Self> {
        let a = Self::create(items.len())?;
        a.lock()?.copy_from_slice(items);
        Ok(a)
    }

    fn bytes(len: usize) -> Result<usize> {
        len.checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(ARRAY_ELEMS))
            .ok_or_else(|| Error::InvalidOptions(format!("an array of {len} elements")))
    }

    fn init_in(mut seg: Segment, len: usize) -> Result<Self> {
        const {
            assert!(
                std::mem::align_of::<T>() <= DATA,
                "alignment above 64 bytes is not supported"
            )
        };
        seg.mapping_mut()
            .place::<RawMutex>(ARRAY_LOCK, Kind::ErrorCheck)?;
        publish(&mut seg, fingerprint::<Array<T>>(), len * size_of::<T>())?;
        Ok(Array {
            seg,
            len,
            _t: PhantomData,
        })
    }

    /// Opens an array that another process created with [`create_named`](Array::create_named)
    /// or [`create_at`](Array::create_at).
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
    /// [`Error::Os`] if the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Array {
            seg: self.seg.try_clone()?,
            len: self.len,
            _t: PhantomData,
        })
    }

    fn lock_deadline(&self, deadline: Deadline) -> Result<ArrayGuard<'_, T>> {
        Ok(ArrayGuard {
            inner: self
                .seg
                .mapping()
                .lock_elements(ARRAY_LOCK, ARRAY_ELEMS, self.len, deadline)?,
        })
    }

    /// Locks the whole array, waiting as long as another holder keeps it.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] if this thread holds it already.
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
    /// As [`lock`](Array::lock).
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

/// The locked elements of an [`Array`] (it dereferences to `[T]`); unlocks when dropped.
/// Not `Send`.
pub struct ArrayGuard<'a, T> {
    inner: SliceGuard<'a, T>,
}

impl<T> ArrayGuard<'_, T> {
    /// Whether the previous holder died holding the lock.
    pub fn previous_holder_died(&self) -> bool {
        self.inner.previous_holder_died()
    }
}

impl<T> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.inner
    }
}

impl<T: fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
