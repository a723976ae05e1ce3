#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod client;
mod error;
mod local;
mod pickle;
mod protocol;
mod proxies;
mod python;
mod server;
mod store;
#[expect(
    unsafe_code,
    reason = "owns the descriptors received with SCM_RIGHTS (the fast path's queues)"
)]
mod sys;
mod value;
mod watch;

ipckit_core::reexport_core!(own_errors);

pub use {
    client::Manager,
    error::{Error, Result},
    ipckit_sockets::{Address, ConnectOptions},
    protocol::{Change, Update},
    proxies::{
        Barrier, Condition, Dict, Guard, List, Lock, Namespace, Pending, Queue, RGuard, RLock,
        Semaphore, Shared, SharedEvent, Step,
    },
    server::{ServeOptions, Server},
    value::{Value, ValueError},
    watch::{Event, Watch},
};
