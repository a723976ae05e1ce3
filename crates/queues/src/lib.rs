#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod mqueue;
mod queue;
mod raw;
mod senders;
#[allow(unsafe_code)] // reason: views the queue's atomics in its shared segment
mod sys;

ipckit_core::reexport_core!();

pub use {
    mqueue::{
        HARD_MSG_MAX, HARD_MSGSIZE_MAX, MessageQueue, MqLimits, MqOptions, MqReceiver, MqSender,
    },
    queue::{JoinableQueue, Queue, QueueReceiver, QueueSender},
    raw::QueueOptions,
};
