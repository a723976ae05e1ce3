//! What the HTTP server does with a body: XML-RPC or JSON-RPC 2.0, over one registry.

use serde_json::{Value as Json, json};

use crate::{
    Error, Fault, Registry, Result, Value,
    error::{INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR},
    xml,
};

const SYSTEM: [&str; 4] = [
    "system.listMethods",
    "system.methodHelp",
    "system.methodSignature",
    "system.multicall",
];

/// The introspection methods both protocols answer; `None` for any other name.
fn system(registry: &Registry, name: &str, params: &[Value]) -> Option<Result<Value>> {
    Some(match name {
        "system.listMethods" => {
            let mut names: Vec<Value> = registry.names().into_iter().map(Value::from).collect();
            names.extend(SYSTEM.iter().map(|s| Value::from(*s)));
            Ok(Value::Array(names))
        }
        "system.methodHelp" => match params {
            [Value::String(m)] if SYSTEM.contains(&m.as_str()) => Ok(Value::from("")),
            [Value::String(m)] => registry.help_of(m).map(Value::String),
            _ => Err(Error::BadParams {
                method: name.into(),
                reason: "takes one method name".into(),
            }),
        },
        // What Python's SimpleXMLRPCServer answers: functions carry no signatures.
        "system.methodSignature" => Ok(Value::from("signatures not supported")),
        _ => return None,
    })
}

fn fault_of(e: &Error) -> Fault {
    match e {
        Error::Remote(f) => f.clone(),
        Error::UnknownMethod(m) => {
            Fault::new(METHOD_NOT_FOUND, format!("method \"{m}\" is not supported"))
        }
        other => Fault::new(other.code(), other.to_string()),
    }
}

fn call_values(registry: &Registry, name: &str, params: Vec<Value>) -> Result<Value> {
    match system(registry, name, &params) {
        Some(r) => r,
        None => registry.call_values(name, params),
    }
}

/// Answers an XML-RPC `<methodCall>` with a `<methodResponse>`.
pub(crate) fn xmlrpc(registry: &Registry, body: &[u8]) -> String {
    let result = match xml::parse_call(body) {
        Err(e) => Err(Fault::new(PARSE_ERROR, e.to_string())),
        Ok((name, params)) if name == "system.multicall" => Ok(multicall(registry, params)),
        Ok((name, params)) => call_values(registry, &name, params).map_err(|e| fault_of(&e)),
    };
    xml::write_response(&result)
}

/// `system.multicall`: a list of `{methodName, params}`, answered by a list where each
/// result is a list of one value, or a fault struct.
fn multicall(registry: &Registry, params: Vec<Value>) -> Value {
    let Some(Value::Array(calls)) = params.into_iter().next() else {
        return xml::fault_struct(&Fault::new(
            INVALID_PARAMS,
            "system.multicall takes a list of calls",
        ));
    };
    let answers = calls.into_iter().map(|call| {
        let name = match call.get("methodName") {
            Some(Value::String(n)) => n.clone(),
            _ => return xml::fault_struct(&Fault::new(INVALID_PARAMS, "a call has no methodName")),
        };
        let params = match call.get("params") {
            Some(Value::Array(p)) => p.clone(),
            None => Vec::new(),
            Some(_) => {
                return xml::fault_struct(&Fault::new(INVALID_PARAMS, "params is not a list"));
            }
        };
        if name == "system.multicall" {
            return xml::fault_struct(&Fault::new(
                INVALID_REQUEST,
                "recursive system.multicall forbidden",
            ));
        }
        match call_values(registry, &name, params) {
            Ok(v) => Value::Array(vec![v]),
            Err(e) => xml::fault_struct(&fault_of(&e)),
        }
    });
    Value::Array(answers.collect())
}

fn error_object(id: Json, code: i64, message: &str, data: Option<Json>) -> Json {
    let mut error = json!({ "code": code, "message": message });
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({ "jsonrpc": "2.0", "error": error, "id": id })
}

/// Answers a JSON-RPC 2.0 body (one request or a batch); `None` when nothing is to be
/// answered (notifications only).
pub(crate) fn jsonrpc(registry: &Registry, body: &[u8]) -> Option<Json> {
    let request: Json = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Some(error_object(
                Json::Null,
                PARSE_ERROR,
                "Parse error",
                Some(e.to_string().into()),
            ));
        }
    };
    match request {
        Json::Array(batch) if batch.is_empty() => Some(error_object(
            Json::Null,
            INVALID_REQUEST,
            "Invalid Request",
            None,
        )),
        Json::Array(batch) => {
            let answers: Vec<Json> = batch.into_iter().filter_map(|r| one(registry, r)).collect();
            (!answers.is_empty()).then_some(Json::Array(answers))
        }
        single => one(registry, single),
    }
}

fn one(registry: &Registry, request: Json) -> Option<Json> {
    let invalid = || {
        Some(error_object(
            Json::Null,
            INVALID_REQUEST,
            "Invalid Request",
            None,
        ))
    };
    let Json::Object(mut m) = request else {
        return invalid();
    };
    let id = m.remove("id");
    let version_ok = m.get("jsonrpc").and_then(Json::as_str) == Some("2.0");
    let id_ok = matches!(
        id,
        None | Some(Json::Null | Json::String(_) | Json::Number(_))
    );
    let params = m.remove("params").unwrap_or(Json::Null);
    let params_ok = matches!(params, Json::Null | Json::Array(_) | Json::Object(_));
    let Some(Json::String(method)) = m.remove("method") else {
        return invalid();
    };
    if !(version_ok && id_ok && params_ok) {
        return invalid();
    }
    let result = if method.starts_with("system.") && method != "system.multicall" {
        let values = match &params {
            Json::Array(a) => a.iter().map(Value::from_json).collect(),
            Json::Null => Vec::new(),
            other => vec![Value::from_json(other)],
        };
        match system(registry, &method, &values) {
            Some(r) => r.map(|v| v.to_json()),
            None => registry.call_json(&method, params),
        }
    } else {
        registry.call_json(&method, params)
    };
    // A request without an id is a notification: run, answer nothing.
    let id = id?;
    Some(match result {
        Ok(v) => json!({ "jsonrpc": "2.0", "result": v, "id": id }),
        Err(Error::Remote(f)) => {
            let data = f.data.as_deref().and_then(|d| serde_json::from_str(d).ok());
            error_object(id, f.code, &f.message, data)
        }
        Err(Error::UnknownMethod(_)) => {
            error_object(id, METHOD_NOT_FOUND, "Method not found", None)
        }
        Err(Error::BadParams { reason, .. }) => {
            error_object(id, INVALID_PARAMS, "Invalid params", Some(reason.into()))
        }
        // A stream: JSON-RPC has none.
        Err(e @ Error::WrongKind { .. }) => error_object(id, INVALID_REQUEST, &e.to_string(), None),
        Err(e) => error_object(
            id,
            INTERNAL_ERROR,
            "Internal error",
            Some(e.to_string().into()),
        ),
    })
}
