//! The `rpc` scenario: the Python tutorial's `xmlrpc` example. A server process registers
//! `add` (and a function that fails, and a slow one); a client process calls `add(5, 3)`
//! and prints `Result: 8`, then fires a burst of concurrent calls on its one connection,
//! lets a call time out and meets a remote error. `rpc serve` serves the tutorial's Python
//! client over HTTP; `rpc call` calls any XML-RPC server, the tutorial's Python one too.

use std::{
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Subcommand;
use ipckit_core::{Ctx, RoleResult};
use ipckit_rpc::{
    Client, ConnectOptions, Error, Fault, HttpServer, Listener, Method, Registry, Server, Value,
    XmlRpcClient,
};
use ipckit_sockets::Address;
use serde::{Deserialize, Serialize};

use crate::{
    echo::{check_removed, server_address},
    support::{Pace, join_all, role},
};

const PATIENCE: Duration = Duration::from_secs(60);

/// The functions, declared once for the server and the client.
const ADD: Method<(i64, i64), i64> = Method::new("add");
const DIVIDE: Method<(i64, i64), i64> = Method::new("divide");
const SLOW: Method<u64, u64> = Method::new("slow");

/// The code `divide` fails with.
const DIVISION_BY_ZERO: i64 = 1;

/// Playing the scenario by hand.
#[derive(Debug, Subcommand)]
pub(crate) enum Mode {
    /// Serve `add`, `divide` and `slow` until interrupted: XML-RPC and JSON-RPC on an
    /// `http://host:port` address (the tutorial's Python client works unchanged), typed
    /// calls on an ipckit address (`unix://…`, `tcp://…`).
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        addr: String,
    },
    /// Call a function of an XML-RPC server and print its result: `call add 5 3`.
    Call {
        /// The function's name.
        method: String,
        /// Its arguments: integers, decimals, `true`/`false`, or text.
        args: Vec<String>,
        /// The server's URL.
        #[arg(long, default_value = "http://127.0.0.1:8000/")]
        addr: String,
    },
}

fn registry() -> Registry {
    Registry::new()
        .method(ADD, |(a, b)| Ok(a + b))
        .help("add", "Adds two integers.")
        .method(DIVIDE, |(a, b)| {
            a.checked_div(b)
                .ok_or_else(|| Fault::new(DIVISION_BY_ZERO, format!("cannot divide {a} by zero")))
        })
        .help("divide", "Divides two integers; fails on zero.")
        .method(SLOW, |ms| {
            thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .help("slow", "Sleeps the given milliseconds, then answers them.")
}

#[derive(Serialize, Deserialize)]
struct Args {
    addr: String,
    pace: Pace,
}

/// The `rpc` scenario, or its by-hand modes.
pub(crate) fn rpc(mode: Option<Mode>, addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    match mode {
        Some(Mode::Serve { addr }) => serve(&addr),
        Some(Mode::Call { method, args, addr }) => call(&method, &args, &addr),
        None => scenario(addr, pace),
    }
}

fn scenario(addr: Option<Address>, pace: Pace) -> anyhow::Result<()> {
    let addr = server_address(addr)?;
    println!(
        "📞 A server process offers add, divide and slow; a client process calls them, over {addr}"
    );
    let args = Args {
        addr: addr.to_string(),
        pace,
    };
    let mut children = vec![
        role("rpc-server").arg(&args)?.spawn()?,
        role("rpc-client").arg(&args)?.spawn()?,
    ];
    let outcome = join_all(&mut children);
    let removed = check_removed(&addr);
    outcome?;
    removed?;
    println!("🎉 RPC complete: every answer was the right one, every failure the expected one");
    Ok(())
}

pub(crate) fn server(ctx: &mut Ctx) -> RoleResult {
    let Args { addr, .. } = ctx.arg()?;
    // The client says when it is done with a notification: `stop` runs and answers nothing.
    let (done, stopped) = mpsc::sync_channel::<()>(1);
    let done = Arc::new(Mutex::new(done));
    let registry = registry().register("stop", move |(): ()| {
        if let Ok(d) = done.lock() {
            let _ = d.try_send(());
        }
        Ok(())
    });
    let server = Server::start(Listener::bind(&addr.parse()?)?, &registry)?;
    println!(
        "🖥️ Server: serving {:?} at {}",
        registry.names(),
        server.address()
    );
    stopped.recv_timeout(PATIENCE)?;
    println!("🖥️ Server: the client said stop; closing");
    // Dropping the server removes its socket file.
    Ok(())
}

pub(crate) fn client(ctx: &mut Ctx) -> RoleResult {
    let Args { addr, pace } = ctx.arg()?;
    // The server is another process: it may not be listening yet.
    let client = Client::connect_with(&addr, &ConnectOptions::new().timeout(PATIENCE).retry(true))?;
    println!("💻 Client: connected to {addr}");

    println!("💻 Client: add(5, 3)");
    let sum = client.call(ADD, &(5, 3))?;
    println!("💻 Client: Result: {sum}");
    if sum != 8 {
        return Err(format!("add(5, 3) answered {sum}").into());
    }
    pace.pause(0.5);

    // Many calls in flight on the one connection, from several threads; each answer must
    // reach the thread that asked.
    let (threads, each) = (8, 50);
    println!(
        "💻 Client: a burst of {} calls from {threads} threads on one connection",
        threads * each
    );
    let start = Instant::now();
    let wrong: usize = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let client = &client;
                s.spawn(move || {
                    (0..each)
                        .filter(|&i| client.call(ADD, &(t * 1000, i)).ok() != Some(t * 1000 + i))
                        .count()
                })
            })
            .map(|h| h.join().unwrap_or(usize::MAX))
            .collect();
        handles.into_iter().sum()
    });
    if wrong > 0 {
        return Err(format!("{wrong} calls of the burst were answered wrong").into());
    }
    println!(
        "💻 Client: all {} answers matched their calls ✅ ({:.1?})",
        threads * each,
        start.elapsed()
    );
    pace.pause(0.5);

    println!("💻 Client: slow(2000) with a deadline of 200 ms");
    let start = Instant::now();
    match client.call_timeout(SLOW, &2000, Duration::from_millis(200)) {
        Err(Error::Timeout) => println!(
            "💻 Client: timed out after {:.1?}, as it should ✅",
            start.elapsed()
        ),
        other => return Err(format!("slow(2000) within 200 ms gave {other:?}").into()),
    }
    pace.pause(0.5);

    println!("💻 Client: divide(1, 0)");
    match client.call(DIVIDE, &(1, 0)) {
        Err(Error::Remote(f)) if f.code == DIVISION_BY_ZERO => {
            println!(
                "💻 Client: the server's function failed: {} (code {}) ✅",
                f.message, f.code
            );
        }
        other => return Err(format!("divide(1, 0) gave {other:?}").into()),
    }
    // The connection serves on after the failures.
    let sum = client.call(ADD, &(40, 2))?;
    println!("💻 Client: add(40, 2) = {sum}; telling the server to stop");
    client.notify("stop", &())?;
    Ok(())
}

fn serve(addr: &str) -> anyhow::Result<()> {
    let registry = registry();
    if addr.starts_with("http://") {
        let server = HttpServer::bind(addr, &registry)?;
        let url = server.url();
        println!(
            "🖥️ Serving {:?} over XML-RPC and JSON-RPC at {url} (Ctrl-C to stop)",
            registry.names()
        );
        println!(
            "   python3 -c 'import xmlrpc.client; print(\"Result:\", xmlrpc.client.ServerProxy(\"{url}\").add(5, 3))'"
        );
        println!(
            "   curl -s -H 'Content-Type: application/json' -d '{{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":[5,3],\"id\":1}}' {url}"
        );
        loop {
            thread::park();
        }
    }
    let server = Server::start(Listener::bind(&addr.parse()?)?, &registry)?;
    println!(
        "🖥️ Serving {:?} to typed clients at {} (Ctrl-C to stop)",
        registry.names(),
        server.address()
    );
    loop {
        thread::park();
    }
}

/// An argument as typed on the command line, as an XML-RPC value.
fn value(arg: &str) -> Value {
    if let Ok(i) = arg.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(d) = arg.parse::<f64>() {
        Value::Double(d)
    } else if let Ok(b) = arg.parse::<bool>() {
        Value::Bool(b)
    } else {
        Value::String(arg.to_owned())
    }
}

/// A value as Python would print it.
fn show(v: &Value) -> String {
    match v {
        Value::Nil => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => format!("{d:?}"),
        Value::String(s) | Value::DateTime(s) => s.clone(),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        Value::Struct(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k:?}: {}", show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn call(method: &str, args: &[String], addr: &str) -> anyhow::Result<()> {
    let mut proxy = XmlRpcClient::new(addr)?;
    let params: Vec<Value> = args.iter().map(|a| value(a)).collect();
    match proxy.call(method, &params) {
        Ok(v) => {
            println!("Result: {}", show(&v));
            Ok(())
        }
        Err(Error::Remote(f)) => bail!("the server's function failed: {f}"),
        Err(e) => Err(e.into()),
    }
}
