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

/// Inside an `impl` block that has `put_deadline(&self, &T, Deadline) -> Result<()>`,
/// writes the other forms of a put: `put`, `try_put` and `put_timeout` (which give the
/// message back). Every queue of every mechanism has the same set, written once here.
#[macro_export]
macro_rules! put_forms {
    () => {
        /// Puts `msg`, waiting while there is no room.
        ///
        /// # Errors
        /// As [`put_deadline`](Self::put_deadline), never `Timeout`.
        pub fn put(&self, msg: &T) -> $crate::Result<()> {
            self.put_deadline(msg, $crate::Deadline::Never)
        }

        /// Puts `msg` if there is room now; gives it back if not.
        ///
        /// # Errors
        /// [`TrySendError::Full`]($crate::TrySendError::Full) or
        /// [`TrySendError::Disconnected`]($crate::TrySendError::Disconnected) with the
        /// message; `Failed` otherwise.
        pub fn try_put(&self, msg: T) -> $crate::Result<(), $crate::TrySendError<T>> {
            self.put_deadline(&msg, $crate::Deadline::Now)
                .map_err(|e| $crate::TrySendError::from_error(e, msg))
        }

        /// Puts `msg`, waiting at most `timeout` for room; gives it back if not.
        ///
        /// # Errors
        /// [`SendTimeoutError::Timeout`]($crate::SendTimeoutError::Timeout) or
        /// [`SendTimeoutError::Disconnected`]($crate::SendTimeoutError::Disconnected) with
        /// the message; `Failed` otherwise.
        pub fn put_timeout(
            &self,
            msg: T,
            timeout: ::std::time::Duration,
        ) -> $crate::Result<(), $crate::SendTimeoutError<T>> {
            self.put_deadline(&msg, $crate::Deadline::after(timeout))
                .map_err(|e| $crate::SendTimeoutError::from_error(e, msg))
        }
    };
}

/// Inside an `impl` block that has `get_deadline(&self, Deadline) -> Result<T>`, writes
/// the other forms of a get: `get`, `try_get` and `get_timeout`.
#[macro_export]
macro_rules! get_forms {
    () => {
        /// Gets the next message, waiting while there is none.
        ///
        /// # Errors
        /// As [`get_deadline`](Self::get_deadline), never `Timeout`.
        pub fn get(&self) -> $crate::Result<T> {
            self.get_deadline($crate::Deadline::Never)
        }

        /// Gets the next message if there is one now.
        ///
        /// # Errors
        /// [`TryRecvError::Empty`]($crate::TryRecvError::Empty) if there is none,
        /// [`TryRecvError::Disconnected`]($crate::TryRecvError::Disconnected) once the
        /// queue is finished and drained.
        pub fn try_get(&self) -> $crate::Result<T, $crate::TryRecvError> {
            Ok(self.get_deadline($crate::Deadline::Now)?)
        }

        /// Gets the next message, waiting at most `timeout`.
        ///
        /// # Errors
        /// [`RecvTimeoutError::Timeout`]($crate::RecvTimeoutError::Timeout) if none came,
        /// [`RecvTimeoutError::Disconnected`]($crate::RecvTimeoutError::Disconnected) once
        /// the queue is finished and drained.
        pub fn get_timeout(
            &self,
            timeout: ::std::time::Duration,
        ) -> $crate::Result<T, $crate::RecvTimeoutError> {
            Ok(self.get_deadline($crate::Deadline::after(timeout))?)
        }
    };
}
