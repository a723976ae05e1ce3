//! XML-RPC and JSON-RPC over HTTP/1.1: a server (thread per connection, read timeouts,
//! bounded bodies) and an XML-RPC client. Requests and responses are parsed by httparse.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Registry, Result, Value, dispatch, xml};

const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// How an [`HttpServer`] treats its clients.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    max_body: usize,
    read_timeout: Duration,
    max_connections: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body: 16 * 1024 * 1024,
            read_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

impl HttpOptions {
    /// The defaults: bodies up to 16 MiB, 30 s of silence ends a connection, 512
    /// connections at once.
    pub fn new() -> Self {
        HttpOptions::default()
    }

    /// The largest body accepted; a `Content-Length` above it is answered 413 without
    /// reading (or allocating) the body, and the connection is closed.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// How long a connection may stay silent (between requests, or inside one) before the
    /// server closes it.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How many connections are served at once; one more is answered 503 and closed.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

/// A registry served over HTTP: XML-RPC (Python's `xmlrpc.client.ServerProxy`) and JSON-RPC
/// 2.0 (`curl`), on `POST /` and `POST /RPC2`; the request's `Content-Type` tells which
/// (`application/json` is JSON-RPC, anything else XML-RPC).
///
/// Create one with [`HttpServer::bind`] (`"127.0.0.1:8000"`; port 0 picks a free one, see
/// [`HttpServer::local_addr`]). Each connection has its own thread and keeps alive
/// (HTTP/1.1) until the client closes it or stays silent past the read timeout, so a slow
/// client holds up nobody else. It stops accepting when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpServer {
    /// Serves `registry` on `addr` (`host:port`, or a URL `http://host:port/`) with the
    /// default [`HttpOptions`].
    ///
    /// # Errors
    ///
    /// [`Error::Core`] with [`ipckit_core::Error::Os`] naming the address if it cannot be
    /// bound; [`ipckit_core::Error::InvalidAddress`] if it does not parse.
    pub fn bind(addr: &str, registry: &Registry) -> Result<HttpServer> {
        HttpServer::bind_with(addr, registry, &HttpOptions::default())
    }

    /// Serves `registry` on `addr` with `opts`.
    ///
    /// # Errors
    ///
    /// As [`HttpServer::bind`].
    pub fn bind_with(addr: &str, registry: &Registry, opts: &HttpOptions) -> Result<HttpServer> {
        let (host, _) = split_url(addr)?;
        let listener = TcpListener::bind(&host)
            .map_err(|e| ipckit_core::Error::os("bind", "socket", &host, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| ipckit_core::Error::os("bind", "socket", &host, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, registry, opts) = (stop.clone(), Arc::new(registry.clone()), opts.clone());
        let thread = thread::Builder::new()
            .name("ipckit-http-accept".into())
            .spawn(move || accept_loop(&listener, &stop2, &registry, &opts))
            .map_err(Error::io)?;
        Ok(HttpServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL, `http://host:port/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept thread.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    registry: &Arc<Registry>,
    opts: &HttpOptions,
) {
    let live = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = stream else {
            // Out of descriptors, most likely: let connections end before trying again.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if live.load(Ordering::Acquire) >= opts.max_connections {
            let _ = respond(
                &mut stream,
                503,
                "Service Unavailable",
                "text/plain",
                b"busy\n",
                false,
            );
            continue;
        }
        live.fetch_add(1, Ordering::AcqRel);
        let (registry, opts, live2) = (registry.clone(), opts.clone(), live.clone());
        let spawned = thread::Builder::new()
            .name("ipckit-http-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &registry, &opts) {
                    tracing::debug!("http connection ends: {e}");
                }
                live2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: ipckit-rpc\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    stream.write_all(&out)
}

struct Head {
    len: usize,
    method: String,
    path: String,
    keep_alive: bool,
    content_length: Option<usize>,
    chunked: bool,
    json: bool,
    expect_continue: bool,
}

fn header_is(value: &[u8], word: &str) -> bool {
    String::from_utf8_lossy(value)
        .split(',')
        .any(|v| v.trim().eq_ignore_ascii_case(word))
}

fn parse_head(buf: &[u8]) -> std::result::Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let version = req.version.unwrap_or(1);
    let mut head = Head {
        len,
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        keep_alive: version == 1,
        content_length: None,
        chunked: false,
        json: false,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad Content-Length")?;
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("connection") {
            if header_is(h.value, "close") {
                head.keep_alive = false;
            } else if header_is(h.value, "keep-alive") {
                head.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            head.json = String::from_utf8_lossy(h.value)
                .trim()
                .to_ascii_lowercase()
                .starts_with("application/json");
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = header_is(h.value, "100-continue");
        }
    }
    Ok(Some(head))
}

/// Reads more into `buf`; `Ok(false)` at the end of the stream.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn serve_connection(
    mut stream: TcpStream,
    registry: &Registry,
    opts: &HttpOptions,
) -> io::Result<()> {
    stream.set_read_timeout(Some(opts.read_timeout))?;
    stream.set_write_timeout(Some(opts.read_timeout))?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let head = loop {
            match parse_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() > MAX_HEAD => {
                    return respond(
                        &mut stream,
                        431,
                        "Request Header Fields Too Large",
                        "text/plain",
                        b"",
                        false,
                    );
                }
                Ok(None) => {
                    if !fill(&mut stream, &mut buf)? {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let body = format!("malformed request: {e}\n");
                    return respond(
                        &mut stream,
                        400,
                        "Bad Request",
                        "text/plain",
                        body.as_bytes(),
                        false,
                    );
                }
            }
        };
        if head.chunked {
            return respond(
                &mut stream,
                411,
                "Length Required",
                "text/plain",
                b"",
                false,
            );
        }
        let Some(length) = head.content_length.or((head.method != "POST").then_some(0)) else {
            return respond(
                &mut stream,
                411,
                "Length Required",
                "text/plain",
                b"",
                false,
            );
        };
        if length > opts.max_body {
            let body = format!("the body is limited to {} bytes\n", opts.max_body);
            let _ = respond(
                &mut stream,
                413,
                "Content Too Large",
                "text/plain",
                body.as_bytes(),
                false,
            );
            // Let the client read the answer before the connection goes.
            let _ = stream.shutdown(Shutdown::Write);
            return Ok(());
        }
        if head.expect_continue && buf.len() < head.len + length {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        while buf.len() < head.len + length {
            if !fill(&mut stream, &mut buf)? {
                return Ok(());
            }
        }
        let body: Vec<u8> = buf.drain(..head.len + length).skip(head.len).collect();
        let keep = head.keep_alive;
        if head.method != "POST" {
            respond(
                &mut stream,
                405,
                "Method Not Allowed",
                "text/plain",
                b"POST only\n",
                keep,
            )?;
        } else if head.path != "/" && head.path != "/RPC2" {
            respond(
                &mut stream,
                404,
                "Not Found",
                "text/plain",
                b"POST to / or /RPC2\n",
                keep,
            )?;
        } else if head.json {
            match dispatch::jsonrpc(registry, &body) {
                Some(answer) => {
                    let text = answer.to_string();
                    respond(
                        &mut stream,
                        200,
                        "OK",
                        "application/json",
                        text.as_bytes(),
                        keep,
                    )?;
                }
                None => respond(
                    &mut stream,
                    204,
                    "No Content",
                    "application/json",
                    b"",
                    keep,
                )?,
            }
        } else {
            let answer = dispatch::xmlrpc(registry, &body);
            respond(&mut stream, 200, "OK", "text/xml", answer.as_bytes(), keep)?;
        }
        if !keep {
            return Ok(());
        }
    }
}

/// `http://host:port/path` (or `host:port`) into `host:port` and the path.
fn split_url(url: &str) -> Result<(String, String)> {
    let invalid = |reason: &str| {
        Error::Core(ipckit_core::Error::InvalidAddress {
            address: url.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if url.starts_with("https://") {
        return Err(invalid("https is not supported"));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let host = if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_owned()))
}

/// An XML-RPC client over HTTP/1.1, for any XML-RPC server (ipckit's [`HttpServer`],
/// Python's `SimpleXMLRPCServer`): Python's `ServerProxy` for Rust.
///
/// Create one with [`XmlRpcClient::new`]`("http://localhost:8000/")`. It keeps its
/// connection alive between calls and opens a new one when the server closed it. Calls take
/// `&mut self`: a client is one connection; make one per thread.
pub struct XmlRpcClient {
    host: String,
    path: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl fmt::Debug for XmlRpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XmlRpcClient(http://{}{})", self.host, self.path)
    }
}

impl XmlRpcClient {
    /// A client of the server at `url` (`http://host:port/path`); nothing is connected yet.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] with [`ipckit_core::Error::InvalidAddress`] for a URL that is not
    /// `http://…`.
    pub fn new(url: &str) -> Result<XmlRpcClient> {
        let (host, path) = split_url(url)?;
        Ok(XmlRpcClient {
            host,
            path,
            timeout: Duration::from_secs(30),
            stream: None,
            buf: Vec::new(),
        })
    }

    /// Sets the bound of each call: connect, send and answer (30 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Calls `method` with XML-RPC values.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] for a fault; [`Error::Timeout`]; [`Error::Disconnected`] if the
    /// server closed without answering; [`Error::Http`] for a status other than 200;
    /// [`Error::Protocol`] for an answer that is not XML-RPC; [`Error::Core`] if nobody
    /// listens.
    pub fn call(&mut self, method: &str, params: &[Value]) -> Result<Value> {
        let body = xml::write_call(method, params);
        let reused = self.stream.is_some();
        match self.exchange(body.as_bytes()) {
            // A kept-alive connection the server closed meanwhile: once more, afresh.
            Err(Error::Disconnected) if reused => {
                self.stream = None;
                self.exchange(body.as_bytes())
            }
            other => other,
        }
        .and_then(|answer| xml::parse_response(&answer))
    }

    /// Calls `method` with serde types: a tuple or a list is the list of parameters,
    /// anything else one parameter; the answer is decoded as `R`.
    ///
    /// # Errors
    ///
    /// As [`XmlRpcClient::call`]; [`Error::Decode`] if the answer is not an `R`.
    pub fn call_as<A: Serialize + ?Sized, R: DeserializeOwned>(
        &mut self,
        method: &str,
        args: &A,
    ) -> Result<R> {
        let params = match Value::from_serialize(args)? {
            Value::Array(a) => a,
            Value::Nil => Vec::new(),
            one => vec![one],
        };
        self.call(method, &params)?.deserialize()
    }

    fn connect(&mut self) -> Result<&mut TcpStream> {
        if self.stream.is_none() {
            let addrs: Vec<SocketAddr> = self
                .host
                .to_socket_addrs()
                .map_err(|e| ipckit_core::Error::os("resolve", "host", &self.host, e))?
                .collect();
            // Each address in turn, as Python's http.client does (`localhost` may be ::1
            // and 127.0.0.1, with the server on only one).
            let mut last = None;
            let mut connected = None;
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, self.timeout) {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = match (connected, last) {
                (Some(s), _) => s,
                (None, Some(e)) => {
                    return Err(ipckit_core::Error::os("connect", "socket", &self.host, e).into());
                }
                (None, None) => {
                    return Err(ipckit_core::Error::InvalidAddress {
                        address: self.host.clone(),
                        reason: "resolves to no address".into(),
                    }
                    .into());
                }
            };
            s.set_nodelay(true).map_err(Error::io)?;
            s.set_read_timeout(Some(self.timeout)).map_err(Error::io)?;
            s.set_write_timeout(Some(self.timeout)).map_err(Error::io)?;
            self.buf.clear();
            self.stream = Some(s);
        }
        self.stream.as_mut().ok_or(Error::Disconnected)
    }

    fn exchange(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        let result = self.exchange_once(body);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange_once(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ipckit-rpc\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            self.path,
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let io_err = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => Error::Disconnected,
            _ => Error::io(e),
        };
        self.connect()?;
        let stream = self.stream.as_mut().ok_or(Error::Disconnected)?;
        stream.write_all(&request).map_err(io_err)?;
        let buf = &mut self.buf;
        let (len, status, reason, length, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = None;
                    let mut close = resp.version == Some(0);
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = header_is(h.value, "close");
                        }
                    }
                    let status = resp.code.unwrap_or(0);
                    if status == 100 {
                        buf.drain(..n);
                        continue;
                    }
                    break (
                        n,
                        status,
                        resp.reason.unwrap_or_default().to_owned(),
                        length,
                        close,
                    );
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    return Err(Error::Protocol("the response's head is too large".into()));
                }
                Ok(httparse::Status::Partial) => {
                    if !fill(stream, buf).map_err(io_err)? {
                        return Err(Error::Disconnected);
                    }
                }
                Err(e) => return Err(Error::Protocol(format!("malformed HTTP response: {e}"))),
            }
        };
        let body = match length {
            Some(length) => {
                while buf.len() < len + length {
                    if !fill(stream, buf).map_err(io_err)? {
                        return Err(Error::Disconnected);
                    }
                }
                buf.drain(..len + length).skip(len).collect::<Vec<u8>>()
            }
            // No length: the body runs to the end of the stream (HTTP/1.0 servers).
            None => {
                while fill(stream, buf).map_err(io_err)? {}
                let body = buf.split_off(len);
                buf.clear();
                self.stream = None;
                body
            }
        };
        if close {
            self.stream = None;
        }
        if status != 200 {
            return Err(Error::Http { status, reason });
        }
        Ok(body)
    }
}
