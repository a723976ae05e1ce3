#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod joinable;
mod mqueue;
mod scratch;
mod senders;
mod shm;
mod sync;

ipckit_core::reexport_core!();

/// The slot protocol's model for loom, built only with `--cfg loom` (`tests/loom.rs`).
#[cfg(loom)]
#[doc(hidden)]
pub use shm::model;

pub use {
    joinable::JoinableQueue,
    mqueue::{
        HARD_MSG_MAX, HARD_MSGSIZE_MAX, MessageQueue, MqLimits, MqOptions, MqReceiver, MqSender,
        remove_stale_message_queues, stale_message_queues,
    },
    shm::{Queue, QueueOptions, QueueReceiver, QueueSender},
};
