#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod mqueue;
mod queue;
mod raw;
mod senders;
#[allow(unsafe_code)] // reason: views the queue's atomics in its shared segment
mod sys;

pub use {
    ipckit_core::{
        Error, RecvBytes, RecvTimeoutError, Result, SendBytes, SendTimeoutError, TryRecvError,
        TrySendError,
    },
    mqueue::{
        HARD_MSG_MAX, HARD_MSGSIZE_MAX, MessageQueue, MqLimits, MqOptions, MqReceiver, MqSender,
    },
    queue::{JoinableQueue, Queue, QueueReceiver, QueueSender},
    raw::QueueOptions,
};
