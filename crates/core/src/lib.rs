#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod bytes;
mod codec;
mod deadline;
mod error;
mod frame;
mod names;
mod roles;
#[allow(unsafe_code)] // reason: the module that fences every unsafe system call
mod sys;
mod transport;
mod typed;

#[cfg(feature = "json")]
pub use codec::Json;
pub use {
    bytes::{RecvBytes, SendBytes},
    codec::{Codec, Postcard},
    deadline::Deadline,
    error::{
        AuthError, Error, RecvTimeoutError, Result, SendTimeoutError, TryRecvError, TrySendError,
    },
    frame::{DEFAULT_MAX_MESSAGE, Framing, Header, MAX_HEADER, decode_header, encode_header},
    names::{
        NAME_PREFIX, find_stale, is_alive, is_stale, owner_pid, remove_stale, temp_path,
        unique_name,
    },
    roles::{Child, Command, Ctx, FnPtr, Handle, Handoff, Role, RoleResult, enter, spawn},
    transport::{Connection, PeerCredentials, Reader, Writer},
    typed::{IntoIter, Iter, Receiver, Sender},
};

/// Re-exports, at the root of a mechanism crate, the core names every program using it
/// needs: the byte traits, the typed ends, codecs, `Deadline`, the errors, and the process
/// roles. Every mechanism crate invokes it once, so that a program depending on
/// `ipckit-queues` alone never names `ipckit_core`, and every crate offers the same set.
///
/// A crate with an error type of its own (ipckit-shmem) writes
/// `reexport_core!(own_errors)`: the same set, with core's `Error` and `Result` under the
/// names `CoreError` and `CoreResult`.
#[macro_export]
macro_rules! reexport_core {
    () => {
        $crate::reexport_core!(@common);
        pub use $crate::{Error, Result};
    };
    (own_errors) => {
        $crate::reexport_core!(@common);
        pub use $crate::{Error as CoreError, Result as CoreResult};
    };
    (@common) => {
        pub use $crate::{
            AuthError, Child, Codec, Command, Ctx, Deadline, FnPtr, Handle, Handoff, IntoIter, Iter,
            Postcard, Receiver, RecvBytes, RecvTimeoutError, Role, RoleResult, SendBytes,
            SendTimeoutError, Sender, TryRecvError, TrySendError, enter, spawn,
        };
    };
}
