//! Everything in this crate that needs `unsafe`, behind safe functions; each block says why
//! it is sound.
//!
//! - [`futex`]: wait and wake on a word in shared memory, and the waits built on them;
//! - [`mutex`]: a robust, process-shared pthread mutex with its guard, and a mutex with the
//!   data it protects (`&mut` data only while the lock is held);
//! - [`cell`]: plain data in shared memory, copied in and out with atomic accesses, so a
//!   concurrent writer in another process is never a data race in this one;
//! - [`map`]: a shared mapping: bounds-checked copies, records at offsets, placing objects
//!   and seeing them (`&T` only for [`Placeable`] types), slices under a lock;
//! - [`rwlock`]: a readers-writer lock word and the data it protects;
//! - [`place`]: the [`Placeable`] contract and the standard types that keep it.

mod cell;
mod futex;
mod map;
mod mutex;
mod place;
mod rwlock;

pub use self::{cell::Plain, place::Placeable};
pub(crate) use self::{
    cell::{PlainCell, RacyCell, is_atomic},
    futex::{futex_wait, futex_wake, sleep_counted, wait_until, wake_sleepers},
    map::{Mapping, ObjectRef, SliceGuard},
    mutex::{Kind, Locked, LockedGuard, RawGuard, RawMutex},
    rwlock::{ReadGuard, RwCell, WriteGuard},
};
