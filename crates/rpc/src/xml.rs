//! XML-RPC's documents: parsed with quick-xml into a small tree, written by hand (the
//! writing is a handful of fixed tags around escaped text).

use std::fmt::Write as _;

use base64::Engine as _;
use quick_xml::{Reader, escape::escape, events::Event};

use crate::{Error, Fault, Result, Value};

const MAX_DEPTH: usize = 128;

#[derive(Debug, Default)]
struct Node {
    name: String,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn expect(&self, name: &str) -> Result<&Node> {
        self.child(name)
            .ok_or_else(|| Error::Protocol(format!("<{}> has no <{name}>", self.name)))
    }
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("malformed XML: {e}"))
}

fn local(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    name.rsplit(':').next().unwrap_or_default().to_owned()
}

/// Parses a document into its root element.
fn parse_tree(xml: &[u8]) -> Result<Node> {
    let text = std::str::from_utf8(xml).map_err(bad)?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Node> = Vec::new();
    let mut root = None;
    loop {
        match reader.read_event().map_err(bad)? {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(bad("nested too deep"));
                }
                stack.push(Node {
                    name: local(e.name().as_ref()),
                    ..Node::default()
                });
            }
            Event::Empty(e) => {
                let node = Node {
                    name: local(e.name().as_ref()),
                    ..Node::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| bad("unbalanced end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml_content().map_err(bad)?);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.decode().map_err(bad)?);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(bad)? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(bad)?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| bad(format!("unknown entity &{name};")))?
                            .to_owned()
                    }
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(bad("the document ends inside an element"));
    }
    root.ok_or_else(|| bad("no root element"))
}

fn parse_value(node: &Node) -> Result<Value> {
    let Some(typed) = node.children.first() else {
        return Ok(Value::String(node.text.clone()));
    };
    let t = typed.text.trim();
    let number = |what: &str| bad(format!("<{what}> holds `{t}`"));
    Ok(match typed.name.as_str() {
        "int" | "i4" | "i8" | "i1" | "i2" => {
            Value::Int(t.parse().map_err(|_| number(&typed.name))?)
        }
        "double" | "float" => Value::Double(t.parse().map_err(|_| number(&typed.name))?),
        "boolean" => match t {
            "1" | "true" => Value::Bool(true),
            "0" | "false" => Value::Bool(false),
            _ => return Err(number("boolean")),
        },
        "string" => Value::String(typed.text.clone()),
        "base64" => {
            let clean: String = t.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            Value::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(clean)
                    .map_err(bad)?,
            )
        }
        "dateTime.iso8601" => Value::DateTime(t.to_owned()),
        "nil" => Value::Nil,
        "array" => {
            let data = typed.expect("data")?;
            Value::Array(
                data.children
                    .iter()
                    .filter(|c| c.name == "value")
                    .map(parse_value)
                    .collect::<Result<_>>()?,
            )
        }
        "struct" => {
            let mut members = Vec::new();
            for m in typed.children.iter().filter(|c| c.name == "member") {
                let name = m.expect("name")?.text.clone();
                members.push((name, parse_value(m.expect("value")?)?));
            }
            Value::Struct(members)
        }
        other => return Err(bad(format!("unknown type <{other}>"))),
    })
}

fn parse_params(node: Option<&Node>) -> Result<Vec<Value>> {
    let Some(params) = node else {
        return Ok(Vec::new());
    };
    params
        .children
        .iter()
        .filter(|c| c.name == "param")
        .map(|p| parse_value(p.expect("value")?))
        .collect()
}

/// Parses a `<methodCall>`: its method name and parameters.
pub(crate) fn parse_call(xml: &[u8]) -> Result<(String, Vec<Value>)> {
    let root = parse_tree(xml)?;
    if root.name != "methodCall" {
        return Err(bad(format!("<{}> is not <methodCall>", root.name)));
    }
    let name = root.expect("methodName")?.text.trim().to_owned();
    Ok((name, parse_params(root.child("params"))?))
}

/// Parses a `<methodResponse>`: its value, or its fault as [`Error::Remote`].
pub(crate) fn parse_response(xml: &[u8]) -> Result<Value> {
    let root = parse_tree(xml)?;
    if root.name != "methodResponse" {
        return Err(bad(format!("<{}> is not <methodResponse>", root.name)));
    }
    if let Some(fault) = root.child("fault") {
        let v = parse_value(fault.expect("value")?)?;
        let code = match v.get("faultCode") {
            Some(Value::Int(c)) => *c,
            _ => 0,
        };
        let message = match v.get("faultString") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        return Err(Error::Remote(Fault::new(code, message)));
    }
    parse_params(root.child("params"))?
        .into_iter()
        .next()
        .ok_or_else(|| bad("<methodResponse> holds no value"))
}

pub(crate) fn write_value(out: &mut String, v: &Value) {
    out.push_str("<value>");
    match v {
        Value::Nil => out.push_str("<nil/>"),
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::Int(i) => {
            if i32::try_from(*i).is_ok() {
                let _ = write!(out, "<int>{i}</int>");
            } else {
                let _ = write!(out, "<i8>{i}</i8>");
            }
        }
        Value::Double(d) => {
            let _ = write!(out, "<double>{d:?}</double>");
        }
        Value::String(s) => {
            let _ = write!(out, "<string>{}</string>", escape(s.as_str()));
        }
        Value::Bytes(b) => {
            let _ = write!(
                out,
                "<base64>{}</base64>",
                base64::engine::general_purpose::STANDARD.encode(b)
            );
        }
        Value::DateTime(s) => {
            let _ = write!(
                out,
                "<dateTime.iso8601>{}</dateTime.iso8601>",
                escape(s.as_str())
            );
        }
        Value::Array(a) => {
            out.push_str("<array><data>");
            for x in a {
                write_value(out, x);
            }
            out.push_str("</data></array>");
        }
        Value::Struct(m) => {
            out.push_str("<struct>");
            for (k, x) in m {
                let _ = write!(out, "<member><name>{}</name>", escape(k.as_str()));
                write_value(out, x);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// A `<methodCall>` document.
pub(crate) fn write_call(method: &str, params: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodCall><methodName>");
    out.push_str(&escape(method));
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_value(&mut out, p);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out
}

/// A `<methodResponse>` document with a value or a fault.
pub(crate) fn write_response(result: &std::result::Result<Value, Fault>) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse>");
    match result {
        Ok(v) => {
            out.push_str("<params><param>");
            write_value(&mut out, v);
            out.push_str("</param></params>");
        }
        Err(f) => {
            out.push_str("<fault>");
            write_value(&mut out, &fault_struct(f));
            out.push_str("</fault>");
        }
    }
    out.push_str("</methodResponse>\n");
    out
}

pub(crate) fn fault_struct(f: &Fault) -> Value {
    Value::Struct(vec![
        ("faultCode".into(), Value::Int(f.code)),
        ("faultString".into(), Value::String(f.message.clone())),
    ])
}
