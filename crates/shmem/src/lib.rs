#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

#[forbid(unsafe_code)]
mod error;
#[forbid(unsafe_code)]
mod mapped;
#[forbid(unsafe_code)]
mod segment;
#[forbid(unsafe_code)]
mod shared;
#[expect(
    unsafe_code,
    reason = "implements the unsafe Placeable contract for SeqLock and Ring"
)]
mod snapshot;
#[expect(
    unsafe_code,
    reason = "implements the unsafe Placeable contract for the locks and waits"
)]
mod sync;
#[expect(
    unsafe_code,
    reason = "futex and pthread calls, atomic copies, typed views of shared memory"
)]
mod sys;
#[expect(
    unsafe_code,
    reason = "implements the unsafe Placeable contract for Value's and RawValue's cells"
)]
mod value;

ipckit_core::reexport_core!(own_errors);

pub use {
    bytemuck::{self, Pod, Zeroable},
    error::{Error, Result},
    mapped::MappedFile,
    segment::{Segment, remove_stale_segments, stale_segments},
    shared::Shared,
    snapshot::{Ring, RingReader, SeqLock},
    sync::{
        Barrier, Condition, Condvar, Event, Mutex, MutexGuard, Notify, RLock, RLockGuard, RwLock,
        RwLockReadGuard, RwLockWriteGuard, Semaphore, SemaphoreOptions,
    },
    sys::{Placeable, Plain},
    value::{Array, ArrayGuard, RawCell, RawValue, Value, ValueCell, ValueGuard},
};
