#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod joinable;
mod mqueue;
mod scratch;
mod senders;
mod shm;

ipckit_core::reexport_core!();

pub use {
    joinable::JoinableQueue,
    mqueue::{
        HARD_MSG_MAX, HARD_MSGSIZE_MAX, MessageQueue, MqLimits, MqOptions, MqReceiver, MqSender,
    },
    shm::{Queue, QueueOptions, QueueReceiver, QueueSender},
};
