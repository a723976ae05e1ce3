#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod bytes;
mod codec;
mod deadline;
mod error;
mod frame;
mod names;
mod roles;
mod stream;
#[allow(unsafe_code)] // reason: the module that fences every unsafe system call
mod sys;
mod typed;

#[cfg(feature = "json")]
pub use codec::Json;
pub use {
    bytes::{RecvBytes, SendBytes},
    codec::{Codec, Postcard},
    deadline::Deadline,
    error::{Error, RecvTimeoutError, Result, SendTimeoutError, TryRecvError, TrySendError},
    frame::{DEFAULT_MAX_MESSAGE, Framing, Header, MAX_HEADER, decode_header, encode_header},
    names::{
        NAME_PREFIX, find_stale, is_alive, is_stale, owner_pid, remove_stale, temp_path,
        unique_name,
    },
    roles::{Child, Command, Ctx, Handle, Handoff, Role, RoleResult, enter},
    stream::{StreamConnection, StreamReader, StreamWriter},
    typed::{IntoIter, Iter, Receiver, Sender},
};
