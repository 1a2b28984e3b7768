//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and the test server's
//! model of server-side apply.
//!
//! Server-side apply is modelled for a single field manager: the applied configuration
//! is merged into the object like a merge patch (maps recursively, every other value —
//! lists included — replaced wholesale; `null` removes). What is simplified away: field
//! ownership (managedFields is never written), conflicts between managers (`force` is
//! ignored), removal of fields the manager applied before and now omits, and
//! merging of keyed lists (`listType: map`) item by item. The request must name a
//! `fieldManager`, as the API server requires.

use serde_json::Value;

/// RFC 7386.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The parent of the location `pointer` names, and the last token.
fn parent<'a>(doc: &'a mut Value, pointer: &str) -> Result<(&'a mut Value, String), String> {
    let (head, last) = pointer
        .rsplit_once('/')
        .ok_or_else(|| format!("bad JSON pointer {pointer:?}"))?;
    let parent = if head.is_empty() {
        doc
    } else {
        doc.pointer_mut(head)
            .ok_or_else(|| format!("path {head:?} does not exist"))?
    };
    Ok((parent, unescape(last)))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent(doc, path)?;
    match parent {
        Value::Object(o) => {
            o.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| format!("bad array index in {path:?}"))?
            };
            a.insert(i, value);
        }
        _ => return Err(format!("parent of {path:?} is not a container")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = parent(doc, path)?;
    let gone = match parent {
        Value::Object(o) => o.remove(&last),
        Value::Array(a) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    };
    gone.ok_or_else(|| format!("path {path:?} does not exist"))
}

/// RFC 6902 (add, remove, replace, move, copy, test); all or nothing.
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops.as_array().ok_or("a JSON patch is an array")?;
    let mut out = doc.clone();
    for op in ops {
        let path = op["path"].as_str().ok_or("operation without path")?;
        let value = || op.get("value").cloned().ok_or(format!("{op} has no value"));
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                remove(&mut out, path)?;
                add(&mut out, path, value()?)?;
            }
            // As the API server's JSON patch library: a missing location tests equal
            // to null (kube's finalizer helper relies on it).
            "test" => {
                if out.pointer(path).unwrap_or(&Value::Null) != &value()? {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move without from")?;
                let v = remove(&mut out, from)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy without from")?;
                let v = out.pointer(from).cloned().ok_or("copy from nowhere")?;
                add(&mut out, path, v)?;
            }
            other => return Err(format!("unknown JSON patch op {other:?}")),
        }
    }
    Ok(out)
}
