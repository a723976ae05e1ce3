//! A readers-writer lock word and the data it protects (`&T` to readers, `&mut T` to the
//! one writer, only while held).

use std::{
    cell::UnsafeCell,
    ops::{Deref, DerefMut},
    sync::atomic::{AtomicU32, Ordering},
};

use bytemuck::Pod;
use ipckit_core::Deadline;

use super::futex::{futex_wake, wait_until};
use crate::{Placeable, Result};

const WRITER: u32 = 1 << 31;

/// The lock word (readers counted, or [`WRITER`]) and the data.
#[repr(C)]
pub(crate) struct RwCell<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through guards, which exist only while the lock is held
// in the matching mode.
unsafe impl<T: Send + Sync> Sync for RwCell<T> {}

// SAFETY: Sync (above), an atomic and plain data (any bytes are a valid `T`); `init` writes
// the data, the state starts unlocked (zero).
unsafe impl<T: Pod + Send + Sync> Placeable for RwCell<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory; the data field lies
        // within it.
        unsafe { UnsafeCell::raw_get(&raw const (*this).data).write(init) };
        Ok(())
    }
}

impl<T> RwCell<T> {
    /// Locks for reading, beside other readers, until `deadline`.
    pub(crate) fn read(&self, deadline: Deadline) -> Result<ReadGuard<'_, T>> {
        wait_until(&self.state, deadline, || {
            let s = self.state.load(Ordering::Relaxed);
            // Acquire pairs with the Release of the last writer's unlock.
            s & WRITER == 0
                && s + 1 < WRITER
                && self
                    .state
                    .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })?;
        Ok(ReadGuard { lock: self })
    }

    /// Locks for writing, alone, until `deadline`.
    pub(crate) fn write(&self, deadline: Deadline) -> Result<WriteGuard<'_, T>> {
        wait_until(&self.state, deadline, || {
            // Acquire pairs with the Release of the last unlock.
            self.state
                .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        Ok(WriteGuard { lock: self })
    }

    /// The lock word, for debugging.
    pub(crate) fn state(&self) -> u32 {
        self.state.load(Ordering::Relaxed)
    }
}

/// Shared access to an [`RwCell`]'s data.
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a RwCell<T>,
}

/// Exclusive access to an [`RwCell`]'s data.
pub(crate) struct WriteGuard<'a, T> {
    lock: &'a RwCell<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: read-locked: no writer exists until this guard drops.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the next writer's Acquire.
        if self.lock.state.fetch_sub(1, Ordering::Release) == 1 {
            futex_wake(&self.lock.state, i32::MAX);
        }
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: write-locked: nobody else reaches the data until this guard drops.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: write-locked: nobody else reaches the data until this guard drops.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the next locker's Acquire.
        self.lock.state.store(0, Ordering::Release);
        futex_wake(&self.lock.state, i32::MAX);
    }
}
