//! XML-RPC against Python's real `xmlrpc.client` and `SimpleXMLRPCServer`, the JSON-RPC 2.0
//! specification's examples, and bad input.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use ipckit_rpc::{
    Error, Fault, HttpOptions, HttpServer, INVALID_REQUEST, Registry, StreamMethod, Value,
    XmlRpcClient,
};
use ipckit_testkit::{Bounded, PATIENCE, python, wait_until};
use serde_json::{Value as Json, json};

fn registry() -> Registry {
    Registry::new()
        .register("add", |(a, b): (i64, i64)| Ok(a + b))
        .help("add", "Adds two integers.")
        .register("subtract", |(a, b): (i64, i64)| Ok(a - b))
        .register("sum", |xs: Vec<f64>| Ok(xs.iter().sum::<f64>()))
        .register("echo", |v: Vec<Json>| Ok(v))
        .register("fail", |(): ()| -> Result<(), Fault> {
            Err(Fault::new(42, "it failed"))
        })
        .register("panic", |(): ()| -> Result<(), Fault> { panic!("boom") })
        .register("update", |_: Vec<i64>| Ok(()))
        .register("get_data", |(): ()| Ok(json!(["hello", 5])))
        .register_values("echo_values", |v| Ok(Value::Array(v)))
        .stream(StreamMethod::<u32, u32>::new("count"), |n| {
            Ok((0..n).map(Ok))
        })
}

fn server() -> HttpServer {
    HttpServer::bind("127.0.0.1:0", &registry()).unwrap()
}

const PY_CLIENT: &str = r#"
import sys, xmlrpc.client, datetime
proxy = xmlrpc.client.ServerProxy(sys.argv[1], allow_none=True, use_builtin_types=True)
print("Result:", proxy.add(5, 3))
assert proxy.add(5, 3) == 8
dt = datetime.datetime(2026, 1, 2, 3, 4, 5)
values = [7, -2**31, 2.5, True, False, "a <b> & 'c' ünï", b"\x00\xffbytes", dt,
          [1, [2, "x"]], {"k": 1, "nested": {"z": None}}, None, "", [], {}]
back = proxy.echo_values(*values)
assert back == values, (back, values)
# Through a typed function too (a list of any values).
assert proxy.echo(1, "two", 3.0) == [1, "two", 3.0]
assert proxy.sum([1, 2.5]) == 3.5
try:
    proxy.fail()
    raise SystemExit("no fault")
except xmlrpc.client.Fault as f:
    assert f.faultCode == 42 and f.faultString == "it failed", f
try:
    proxy.nope()
    raise SystemExit("no fault")
except xmlrpc.client.Fault as f:
    assert f.faultCode == -32601, f
try:
    proxy.add("x", 1)
    raise SystemExit("no fault")
except xmlrpc.client.Fault as f:
    assert f.faultCode == -32602, f
try:
    proxy.panic()
    raise SystemExit("no fault")
except xmlrpc.client.Fault as f:
    assert f.faultCode == -32603 and "boom" in f.faultString, f
assert proxy.add(1, 1) == 2
methods = proxy.system.listMethods()
assert "add" in methods and "system.multicall" in methods, methods
assert proxy.system.methodHelp("add") == "Adds two integers."
assert proxy.system.methodSignature("add") == "signatures not supported"
multi = xmlrpc.client.MultiCall(proxy)
multi.add(5, 3)
multi.fail()
multi.subtract(5, 3)
results = multi()
assert results[0] == 8
try:
    results[1]
    raise SystemExit("no fault")
except xmlrpc.client.Fault as f:
    assert f.faultCode == 42
assert results[2] == 2
# i8 from the server: a result beyond 32 bits.
assert proxy.add(2**31 - 1, 2**31 - 1) == 2**32 - 2
print("python client ok")
"#;

#[test]
fn pythons_xmlrpc_client_calls_every_type_and_fault() {
    let Some(py) = python(12..=99) else { return };
    let server = server();
    let url = server.url();
    let out = Bounded::python(&py, PY_CLIENT, &[&url])
        .unwrap()
        .wait_ok("the Python client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Result: 8"), "{text}");
    assert!(text.contains("python client ok"), "{text}");
    // /RPC2 too.
    let out = Bounded::python(&py, PY_CLIENT, &[&format!("{url}RPC2")])
        .unwrap()
        .wait_ok("/RPC2");
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client ok"));
}

const PY_SERVER: &str = r#"
import sys, os
from xmlrpc.server import SimpleXMLRPCServer
server = SimpleXMLRPCServer(("127.0.0.1", 0), allow_none=True, logRequests=False, use_builtin_types=True)
server.register_function(lambda a, b: a + b, "add")
server.register_function(lambda *v: list(v), "echo")
def fail():
    raise ValueError("python says no")
server.register_function(fail, "fail")
server.register_introspection_functions()
server.register_multicall_functions()
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(str(server.server_address[1]))
os.rename(tmp, sys.argv[1])
server.serve_forever()
"#;

#[test]
fn ipckits_client_calls_pythons_simplexmlrpcserver() {
    let Some(py) = python(12..=99) else { return };
    let port_file = std::env::temp_dir().join(format!("ipckit-rpc-pyport-{}", std::process::id()));
    let _ = std::fs::remove_file(&port_file);
    let _python = Bounded::python(&py, PY_SERVER, &[port_file.to_str().unwrap()]).unwrap();
    wait_until("Python's server is up", || port_file.exists());
    let port = std::fs::read_to_string(&port_file).unwrap();
    let _ = std::fs::remove_file(&port_file);
    let mut client = XmlRpcClient::new(&format!("http://127.0.0.1:{port}/")).unwrap();
    assert_eq!(
        client.call("add", &[5.into(), 3.into()]).unwrap(),
        Value::Int(8)
    );
    assert_eq!(client.call_as::<_, i64>("add", &(5, 3)).unwrap(), 8);
    let values = vec![
        Value::Int(7),
        Value::Int(-(1 << 31)),
        Value::Double(2.5),
        Value::Bool(true),
        Value::String("a <b> & ünï".into()),
        Value::Bytes(vec![0, 255, 1]),
        Value::DateTime("20260102T03:04:05".into()),
        Value::Array(vec![Value::Int(1), Value::String("x".into())]),
        Value::Struct(vec![("k".into(), Value::Int(1))]),
        Value::Nil,
    ];
    assert_eq!(
        client.call("echo", &values).unwrap(),
        Value::Array(values.clone())
    );
    match client.call("fail", &[]) {
        Err(Error::Remote(f)) => assert!(f.message.contains("python says no"), "{f}"),
        other => panic!("expected a fault, got {other:?}"),
    }
    let methods = client.call("system.listMethods", &[]).unwrap();
    assert!(matches!(&methods, Value::Array(m) if m.contains(&Value::from("add"))));
    // Many calls on the kept-alive (or reopened: Python's server speaks HTTP/1.0) connection.
    for i in 0..50 {
        assert_eq!(client.call_as::<_, i64>("add", &(i, i)).unwrap(), 2 * i);
    }
}

/// Posts `body` and reads the whole answer: status and body.
fn post(addr: SocketAddr, content_type: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

fn rpc(addr: SocketAddr, body: &str) -> Option<Json> {
    let (status, text) = post(addr, "application/json", body);
    match status {
        204 => None,
        200 => Some(serde_json::from_str(&text).unwrap()),
        s => panic!("status {s}: {text}"),
    }
}

#[test]
fn json_rpc_follows_the_specifications_examples() {
    let server = server();
    let a = server.local_addr();
    let call = |body: &str| rpc(a, body);
    // Positional parameters.
    assert_eq!(
        call(r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#),
        Some(json!({"jsonrpc": "2.0", "result": 19, "id": 1}))
    );
    assert_eq!(
        call(r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": "two"}"#),
        Some(json!({"jsonrpc": "2.0", "result": -19, "id": "two"}))
    );
    // Notifications: no answer.
    assert_eq!(
        call(r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#),
        None
    );
    // A missing method.
    assert_eq!(
        call(r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#),
        Some(
            json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"})
        )
    );
    // Invalid JSON.
    let r = call(r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#).unwrap();
    assert_eq!(r["error"]["code"], -32700);
    assert_eq!(r["id"], Json::Null);
    // Invalid request object.
    assert_eq!(
        call(r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#),
        Some(
            json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null})
        )
    );
    // A batch that is not JSON.
    let r = call(r#"[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]"#).unwrap();
    assert_eq!(r["error"]["code"], -32700);
    // An empty batch.
    assert_eq!(call("[]").unwrap()["error"]["code"], -32600);
    // A batch of garbage: one error each.
    let r = call("[1,2,3]").unwrap();
    assert_eq!(r.as_array().unwrap().len(), 3);
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .all(|e| e["error"]["code"] == -32600 && e["id"].is_null())
    );
    // A mixed batch.
    let r = call(
        r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "update", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#,
    )
    .unwrap();
    assert_eq!(
        r,
        json!([
            {"jsonrpc": "2.0", "result": 7.0, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
        ])
    );
    // A batch of notifications only: nothing.
    assert_eq!(
        call(
            r#"[{"jsonrpc": "2.0", "method": "update", "params": [1]}, {"jsonrpc": "2.0", "method": "update", "params": [7]}]"#
        ),
        None
    );
    // Invalid params, the function's error, a panic.
    let r = call(r#"{"jsonrpc": "2.0", "method": "add", "params": ["x"], "id": 3}"#).unwrap();
    assert_eq!(r["error"]["code"], -32602);
    let r = call(r#"{"jsonrpc": "2.0", "method": "fail", "id": 4}"#).unwrap();
    assert_eq!(r["error"], json!({"code": 42, "message": "it failed"}));
    let r = call(r#"{"jsonrpc": "2.0", "method": "panic", "id": 5}"#).unwrap();
    assert_eq!(r["error"]["code"], -32603);
    // Introspection over JSON-RPC too.
    let r = call(r#"{"jsonrpc": "2.0", "method": "system.listMethods", "id": 6}"#).unwrap();
    assert!(r["result"].as_array().unwrap().contains(&json!("add")));
}

#[test]
fn malformed_xml_is_a_fault_and_the_connection_serves_on() {
    let server = server();
    let (status, body) = post(
        server.local_addr(),
        "text/xml",
        "<methodCall><methodName>add</methodName><params>",
    );
    assert_eq!(status, 200);
    assert!(
        body.contains("<fault>") && body.contains("-32700"),
        "{body}"
    );
    let (_, body) = post(server.local_addr(), "text/xml", "not xml at all <<<");
    assert!(body.contains("-32700"), "{body}");
    let mut client = XmlRpcClient::new(&server.url()).unwrap();
    assert_eq!(client.call_as::<_, i64>("add", &(5, 3)).unwrap(), 8);
}

#[test]
fn a_body_over_the_maximum_is_413_without_reading_it() {
    let server = HttpServer::bind_with(
        "127.0.0.1:0",
        &registry(),
        &HttpOptions::new().max_body(1024),
    )
    .unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    // Announces 1 TiB and sends none of it.
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: 1099511627776\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn silent_and_slow_clients_block_nobody() {
    let server = HttpServer::bind_with(
        "127.0.0.1:0",
        &registry(),
        &HttpOptions::new().read_timeout(Duration::from_millis(500)),
    )
    .unwrap();
    // One says nothing, one stops in the middle of its head, one in the middle of its body.
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    let mut half_head = TcpStream::connect(server.local_addr()).unwrap();
    half_head
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut half_body = TcpStream::connect(server.local_addr()).unwrap();
    half_body
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<metho")
        .unwrap();
    let mut client = XmlRpcClient::new(&server.url())
        .unwrap()
        .timeout(Duration::from_secs(2));
    for i in 0..20 {
        assert_eq!(client.call_as::<_, i64>("add", &(i, 1)).unwrap(), i + 1);
    }
    // The server closes them after its read timeout.
    for s in [&mut silent, &mut half_head, &mut half_body] {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_thousand_sequential_connections_leave_no_descriptor_behind() {
    let server = server();
    let mut client = XmlRpcClient::new(&server.url()).unwrap();
    assert_eq!(client.call_as::<_, i64>("add", &(1, 1)).unwrap(), 2);
    drop(client);
    let before = open_descriptors();
    for i in 0..1000 {
        let mut client = XmlRpcClient::new(&server.url()).unwrap();
        assert_eq!(client.call_as::<_, i64>("add", &(i, 1)).unwrap(), i + 1);
    }
    wait_until("the server closed every connection", || {
        open_descriptors() <= before
    });
}

#[test]
fn a_stream_method_over_http_is_a_fault_not_a_stream() {
    let server = server();
    let answer = rpc(
        server.local_addr(),
        r#"{"jsonrpc":"2.0","method":"count","params":[3],"id":1}"#,
    )
    .unwrap();
    assert_eq!(answer["error"]["code"], json!(INVALID_REQUEST), "{answer}");
    let mut client = XmlRpcClient::new(&server.url()).unwrap();
    match client.call_as::<_, Vec<u32>>("count", &(3,)) {
        Err(Error::Remote(f)) => {
            assert_eq!(f.code, INVALID_REQUEST);
            assert!(f.message.contains("streams"), "{}", f.message);
        }
        other => panic!("expected a fault, got {other:?}"),
    }
}
