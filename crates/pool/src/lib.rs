#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod dispatch;
mod error;
mod event;
mod job;
mod options;
mod pool;
mod worker;

ipckit_core::reexport_core!(own_errors);

pub use {
    error::{Error, Result},
    event::{Event, TaskRef, WorkerInfo},
    options::PoolOptions,
    pool::{Imap, ImapUnordered, Pool, TaskHandle},
};

/// The workspace README's examples (pipes, spawning, the pool), compiled and run as doc
/// tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct WorkspaceReadme;
