#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod error;
#[allow(unsafe_code)] // reason: maps shared memory; every block states why it is sound
mod mapped;
#[allow(unsafe_code)] // reason: raw copies in and out of shared memory, each justified
mod segment;
#[allow(unsafe_code)] // reason: places objects in shared memory (the `Placeable` contract)
mod shared;
#[allow(unsafe_code)] // reason: sequence locks over cells in shared memory
mod snapshot;
#[allow(unsafe_code)] // reason: lock guards hand out the data they protect
mod sync;
#[allow(unsafe_code)] // reason: the futex and pthread calls and atomic copies
mod sys;
#[allow(unsafe_code)] // reason: value cells and array guards over shared memory
mod value;

pub use {
    error::{Error, Result},
    mapped::MappedFile,
    segment::{Segment, remove_stale_segments, stale_segments},
    shared::{Placeable, Shared},
    snapshot::{Ring, RingReader, SeqLock},
    sync::{
        Barrier, Condvar, Event, Mutex, MutexGuard, Notify, RwLock, RwLockReadGuard,
        RwLockWriteGuard, Semaphore, SemaphoreInit,
    },
    value::{Array, ArrayGuard, RawCell, RawValue, Value, ValueCell, ValueGuard},
};
