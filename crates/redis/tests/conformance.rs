//! The conformance suite on a real `redis-server`, started on a free port for this test
//! binary and stopped (its directory removed) when the binary exits.

use std::sync::OnceLock;

use ipckit_conformance::{Flavour, conformance};
use ipckit_redis::{Error, RedisQueue, RedisReceiver, RedisSender, RedisServer, Result};

/// The one server of this binary: a test that finds no `redis-server` fails with the
/// reason, it does not skip.
fn server_url() -> Result<String> {
    static SERVER: OnceLock<std::result::Result<RedisServer, String>> = OnceLock::new();
    match SERVER.get_or_init(|| RedisServer::start().map_err(|e| e.to_string())) {
        Ok(s) => Ok(s.url()),
        Err(e) => Err(Error::Unsupported(Box::leak(
            format!("these tests need redis-server: {e}").into_boxed_str(),
        ))),
    }
}

struct RedisFlavour;
impl Flavour for RedisFlavour {
    type Tx = RedisSender;
    type Rx = RedisReceiver;
    fn pair() -> Result<(RedisSender, RedisReceiver)> {
        let q: RedisQueue<Vec<u8>> = RedisQueue::create(&server_url()?, 64)?;
        Ok((q.byte_sender()?, q.byte_receiver()?))
    }
}

conformance!(redis, RedisFlavour, messages);
