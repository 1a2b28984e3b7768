//! Label and field selectors as the API server parses them from a query string.
//!
//! Labels: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-joined.
//! Fields: `path=v`, `path==v`, `path!=v` on any dotted path (`metadata.name`,
//! `metadata.namespace`, `spec.nodeName`, ...); a missing field compares as "".

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

/// Split at commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn set(values: &str) -> Result<Vec<String>, String> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| format!("expected (a,b) in selector, got {values:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_term(t: &str, fields: bool) -> Result<Req, String> {
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(Req::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(Req::Eq(k.trim().into(), v.trim().into()));
    }
    if fields {
        return Err(format!("field selector term {t:?} has no operator"));
    }
    if let Some((k, v)) = t.split_once(" notin ") {
        return Ok(Req::NotIn(k.trim().into(), set(v)?));
    }
    if let Some((k, v)) = t.split_once(" in ") {
        return Ok(Req::In(k.trim().into(), set(v)?));
    }
    match t.strip_prefix('!') {
        Some(k) => Ok(Req::NotExists(k.trim().into())),
        None => Ok(Req::Exists(t.into())),
    }
}

impl Selector {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let parse = |s: Option<&str>, f| {
            terms(s.unwrap_or(""))
                .into_iter()
                .map(|t| parse_term(t, f))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Selector {
            labels: parse(labels, false)?,
            fields: parse(fields, true)?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let field = |path: &str| {
            let v = path.split('.').fold(obj, |v, p| &v[p]);
            match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            }
        };
        self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => label(k) == Some(v),
            Req::Ne(k, v) => label(k) != Some(v),
            Req::Exists(k) => label(k).is_some(),
            Req::NotExists(k) => label(k).is_none(),
            Req::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        }) && self.fields.iter().all(|r| match r {
            Req::Eq(k, v) => field(k) == *v,
            Req::Ne(k, v) => field(k) != *v,
            _ => false,
        })
    }
}
