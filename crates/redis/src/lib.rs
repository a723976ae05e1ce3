#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod conn;
mod queue;
mod server;

ipckit_core::reexport_core!();

pub use {
    queue::{AckMode, Delivery, RedisOptions, RedisQueue, RedisReceiver, RedisSender},
    server::RedisServer,
};
