#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod client;
mod dispatch;
mod error;
mod http;
mod registry;
mod server;
mod value;
mod wire;
mod xml;

ipckit_core::reexport_core!(own_errors);

pub use {
    client::Client,
    client::Stream,
    error::{
        DEADLINE_EXCEEDED, Error, Fault, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST,
        METHOD_NOT_FOUND, PARSE_ERROR, Result,
    },
    http::{HttpOptions, HttpServer, XmlRpcClient},
    ipckit_sockets::{Address, ConnectOptions, Connection, Listener},
    registry::{Method, Registry, StreamMethod},
    server::{ServeOptions, Server, serve_connection},
    value::Value,
};
