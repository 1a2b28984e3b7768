//! `kubectl get` as the API server's table printer does it for a CRD: each
//! additionalPrinterColumn's JSONPath evaluated on the object as stored, so a test shows
//! what a person running `kubectl get lr` (or `-o wide`) would see.
//!
//! JSONPath support is the subset the LogRoute columns use: `.a.b` member access and one
//! `[?(@.key=="value")]` filter per list, as in `.status.conditions[?(@.type=="Ready")].status`.

use serde_json::Value;

/// One column of the CRD (name, JSONPath, type, priority).
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub json_path: String,
    pub kind: String,
    pub priority: i64,
}

/// The printer columns of the LogRoute CRD as `logroute crd` generates it.
pub fn logroute_columns() -> Vec<Column> {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(logroute::api::LogRoute::crd()).expect("CRD to JSON");
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| Column {
            name: c["name"].as_str().unwrap_or_default().to_string(),
            json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
            kind: c["type"].as_str().unwrap_or_default().to_string(),
            priority: c["priority"].as_i64().unwrap_or(0),
        })
        .collect()
}

/// Split `.a.b[?(@.k=="v")].c` into steps.
fn steps(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for ch in path.chars() {
        match ch {
            '[' => {
                depth += 1;
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push(ch);
            }
            ']' => {
                depth -= 1;
                cur.push(ch);
                out.push(std::mem::take(&mut cur));
            }
            '.' if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Evaluate `path` on `obj`: the values found (kubectl prints them comma-separated).
pub fn eval(obj: &Value, path: &str) -> Vec<Value> {
    let mut current = vec![obj.clone()];
    for step in steps(path) {
        let mut next = Vec::new();
        for v in current {
            if let Some(filter) = step
                .strip_prefix("[?(@.")
                .and_then(|s| s.strip_suffix(")]"))
            {
                let (key, want) = filter.split_once("==").expect("filter key==value");
                let want = want.trim_matches('"');
                for item in v.as_array().into_iter().flatten() {
                    if item[key].as_str() == Some(want) {
                        next.push(item.clone());
                    }
                }
            } else if let Some(found) = v.get(&step) {
                next.push(found.clone());
            }
        }
        current = next;
    }
    current
}

fn cell(values: &[Value], kind: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    if values.is_empty() {
        return "<none>".into();
    }
    values
        .iter()
        .map(|v| match (kind, v) {
            ("date", Value::String(s)) => match s.parse::<chrono::DateTime<chrono::Utc>>() {
                Ok(t) => age((now - t).num_seconds()),
                Err(_) => s.clone(),
            },
            (_, Value::String(s)) => s.clone(),
            (_, other) => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// The table `kubectl get lr NAME` (`wide`: `-o wide`) prints for `obj`.
pub fn get_table(obj: &Value, wide: bool) -> String {
    let columns: Vec<Column> = logroute_columns()
        .into_iter()
        .filter(|c| wide || c.priority == 0)
        .collect();
    let now = chrono::Utc::now();
    let mut rows = vec![
        std::iter::once("NAME".to_string())
            .chain(columns.iter().map(|c| c.name.to_uppercase()))
            .collect::<Vec<_>>(),
    ];
    {
        let mut row = vec![
            obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ];
        for c in &columns {
            row.push(cell(&eval(obj, &c.json_path), &c.kind, now));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i] + 3))
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of column `name` for `obj` as printed.
pub fn column(obj: &Value, name: &str) -> String {
    let c = logroute_columns()
        .into_iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("no printer column {name}"));
    cell(&eval(obj, &c.json_path), &c.kind, chrono::Utc::now())
}
