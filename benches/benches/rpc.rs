//! RPC workloads: `rpc_call_add` and `xmlrpc_call_add`.
//!
//! - `rpc_call_add` (time per call): a child role serves `add(i64, i64)` with
//!   `ipckit_rpc::serve_connection` on the one connection it accepts on a Unix socket
//!   file; the parent's `Client` calls `add(5, 3)` with its typed `Method`, one call after
//!   the other. Its floor `raw_uds` is a round trip of the same bytes over std's
//!   `UnixStream` (`REQUEST` bytes out, `REPLY` bytes back: the size of the typed call's
//!   frame and of its answer's), with a child echoing them from one thread. ipckit's call
//!   is read and run by one server thread, which first hands the reading to an idle thread
//!   of the connection (leader/follower); the lone caller reads its own answer.
//! - `xmlrpc_call_add` (time per call over HTTP): Python's `xmlrpc.client` calling
//!   `add(5, 3)` on ipckit's `HttpServer` (`python_client_ipckit_server`) and on Python's
//!   own `SimpleXMLRPCServer` (`python_client_python_server`), both driven by
//!   `benches/python/rpc.py` (one line per batch: the number of calls); and ipckit's
//!   `XmlRpcClient` on ipckit's server (`ipckit_client_ipckit_server`). The Python rows
//!   run when a Python 3.8+ is found (`python3` or pyenv's), and are left out otherwise.
//!
//! Every wait is bounded by `PATIENCE`: connects retry until it, the Python process's
//! answers are awaited at most that long, and every child is killed when its row ends.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench rpc -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use criterion::Criterion;
use ipckit_benches::{Figure, Group, PATIENCE, PythonProc, Rig, spawn};
use ipckit_core::{Child, Ctx, Role, RoleResult};
use ipckit_rpc::{
    Client, ConnectOptions, HttpServer, Listener, Method, Registry, XmlRpcClient, serve_connection,
};

const ADD: Method<(i64, i64), i64> = Method::new("add");

/// The bytes of a typed `add(5, 3)` call on the wire (frame header included), and of its
/// answer: what the floor sends and receives.
const REQUEST: usize = 19;
const REPLY: usize = 10;

const IPCKIT_SERVE: &str = "rpc-ipckit-serve";
const RAW_SERVE: &str = "rpc-raw-serve";

const ROLES: &[Role] = &[
    Role::new(IPCKIT_SERVE, ipckit_serve),
    Role::new(RAW_SERVE, raw_serve),
];

fn registry() -> Registry {
    Registry::new().method(ADD, |(a, b)| Ok(a + b))
}

/// A socket file under a fresh temporary name, removed (if still there) on drop.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new() -> Self {
        SocketPath(ipckit_core::temp_path("rpc-bench"))
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves one connection on the socket file it is given, until the client leaves.
fn ipckit_serve(ctx: &mut Ctx) -> RoleResult {
    let path: PathBuf = ctx.arg()?;
    let listener = Listener::bind(&format!("unix://{}", path.display()).parse()?)?;
    let conn = listener.accept_timeout(PATIENCE)?;
    serve_connection(conn, &registry())?;
    Ok(())
}

/// Answers every `REQUEST` bytes with `REPLY` bytes, until the client leaves.
fn raw_serve(ctx: &mut Ctx) -> RoleResult {
    let path: PathBuf = ctx.arg()?;
    let listener = UnixListener::bind(&path)?;
    let (mut s, _) = listener.accept()?;
    let (mut req, reply) = ([0u8; REQUEST], [8u8; REPLY]);
    loop {
        match s.read_exact(&mut req) {
            Ok(()) => s.write_all(&reply)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn wait_for(path: &Path) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e).context("connecting"),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

struct Typed {
    client: Option<Client>,
    child: Child,
    _path: SocketPath,
}

impl Rig for Typed {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let client = self.client.as_ref().context("no client")?;
        let start = Instant::now();
        for _ in 0..iters {
            ensure!(client.call(ADD, &(5, 3))? == 8, "add(5, 3) is not 8");
        }
        Ok(start.elapsed())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.client = None;
        self.child.join_timeout(PATIENCE)?;
        Ok(())
    }
}

struct RawRig {
    stream: UnixStream,
    child: Child,
    _path: SocketPath,
}

impl Rig for RawRig {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let (req, mut reply) = ([5u8; REQUEST], [0u8; REPLY]);
        let start = Instant::now();
        for _ in 0..iters {
            self.stream.write_all(&req)?;
            self.stream.read_exact(&mut reply)?;
        }
        Ok(start.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        drop(self.stream);
        let mut child = self.child;
        child.join_timeout(PATIENCE)?;
        Ok(())
    }
}

fn typed(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "rpc_call_add", Figure::RoundTrip);
    g.row("ipckit", || {
        let path = SocketPath::new();
        let child = spawn(IPCKIT_SERVE, &path.0, [])?;
        let addr = format!("unix://{}", path.0.display());
        let client =
            Client::connect_with(&addr, &ConnectOptions::new().retry(true).timeout(PATIENCE))?;
        Ok(Typed {
            client: Some(client),
            child,
            _path: path,
        })
    })?;
    g.row("raw_uds", || {
        let path = SocketPath::new();
        let child = spawn(RAW_SERVE, &path.0, [])?;
        let stream = wait_for(&path.0)?;
        Ok(RawRig {
            stream,
            child,
            _path: path,
        })
    })?;
    g.finish(&[("ipckit", &["raw_uds"])], &[]);
    Ok(())
}

/// Python's `xmlrpc.client` in a child process, calling `add(5, 3)` at `url`; with the
/// Python server it calls, if any, and ipckit's server, if it is that one.
struct PythonClient {
    client: PythonProc,
    _server: Option<PythonProc>,
    _http: Option<HttpServer>,
}

impl Rig for PythonClient {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.client.order(&iters.to_string())?;
        let line = self.client.line()?;
        ensure!(line == "done", "the Python client said {line:?}");
        Ok(start.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        self.client.finish()
    }
}

struct RustClient {
    client: XmlRpcClient,
    _http: HttpServer,
}

impl Rig for RustClient {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for _ in 0..iters {
            ensure!(
                self.client.call_as::<_, i64>("add", &(5, 3))? == 8,
                "add(5, 3) is not 8"
            );
        }
        Ok(start.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/rpc.py")
}

fn xmlrpc(c: &mut Criterion) -> anyhow::Result<()> {
    let python = ipckit_testkit::find_python(8..=99);
    let mut g = Group::new(c, "xmlrpc_call_add", Figure::RoundTrip);
    if let Some(py) = &python {
        g.row("python_client_ipckit_server", || {
            let http = HttpServer::bind("127.0.0.1:0", &registry())?;
            let client = PythonProc::start(py, &script(), &["client", &http.url()])?;
            Ok(PythonClient {
                client,
                _server: None,
                _http: Some(http),
            })
        })?;
        g.row("python_client_python_server", || {
            let server = PythonProc::start(py, &script(), &["serve"])?;
            let port = server.line()?;
            let url = format!("http://127.0.0.1:{port}/");
            let client = PythonProc::start(py, &script(), &["client", &url])?;
            Ok(PythonClient {
                client,
                _server: Some(server),
                _http: None,
            })
        })?;
    } else {
        eprintln!("xmlrpc_call_add: no Python 3.8+ found; the Python rows are left out");
    }
    g.row("ipckit_client_ipckit_server", || {
        let http = HttpServer::bind("127.0.0.1:0", &registry())?;
        let client = XmlRpcClient::new(&http.url())?;
        Ok(RustClient {
            client,
            _http: http,
        })
    })?;
    g.finish(
        &[("python_client_ipckit_server", &[])],
        &["python_client_python_server"],
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(ROLES);
    let mut c = Criterion::default().configure_from_args();
    typed(&mut c)?;
    xmlrpc(&mut c)?;
    c.final_summary();
    Ok(())
}
