//! Index and data stream names from a template, per record. Pure.

use std::fmt::Write as _;

use chrono::format::Item;

use crate::record::{Record, Timestamp};

/// Why an index template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}} (known: {{namespace}}, {{pod}}, {{container}}, {{node}})")]
    UnknownPlaceholder(String),
    #[error("unclosed '{{'")]
    Unclosed,
    #[error("invalid date pattern {0:?}")]
    BadDatePattern(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Namespace,
    Pod,
    Container,
    Node,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Date(Vec<Item<'static>>),
    Field(Field),
}

/// Value of `{namespace}` / `{pod}` for a container that belongs to no pod.
pub const NO_POD: &str = "none";

/// A compiled index (or data stream) name template: `{namespace}`, `{pod}`,
/// `{container}`, `{node}` and strftime date patterns evaluated in UTC on the record's
/// timestamp (whole seconds). The rendered name is made valid for Elasticsearch: see
/// [`sanitize_index`].
#[derive(Debug, Clone)]
pub struct IndexTemplate {
    parts: Vec<Part>,
}

impl IndexTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let (text, after) = match rest.find('{') {
                Some(open) => (&rest[..open], Some(&rest[open + 1..])),
                None => (rest, None),
            };
            if !text.is_empty() {
                parts.push(literal_or_date(text)?);
            }
            let Some(after) = after else { break };
            let close = after.find('}').ok_or(TemplateError::Unclosed)?;
            parts.push(Part::Field(match &after[..close] {
                "namespace" => Field::Namespace,
                "pod" => Field::Pod,
                "container" => Field::Container,
                "node" => Field::Node,
                other => return Err(TemplateError::UnknownPlaceholder(other.to_string())),
            }));
            rest = &after[close + 1..];
        }
        Ok(Self { parts })
    }

    /// True when the name does not depend on the record.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The index name for one record, already sanitized.
    pub fn render(&self, record: &Record) -> String {
        let mut out = String::new();
        let c = &record.container;
        let date = Timestamp {
            secs: record.timestamp.secs,
            nanos: 0,
        }
        .to_datetime();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                // Items were validated by `parse_to_owned`, so formatting cannot fail.
                Part::Date(items) => {
                    let _ = write!(out, "{}", date.format_with_items(items.iter()));
                }
                Part::Field(Field::Namespace) => {
                    out.push_str(c.pod.as_ref().map_or(NO_POD, |p| p.namespace.as_str()))
                }
                Part::Field(Field::Pod) => {
                    out.push_str(c.pod.as_ref().map_or(NO_POD, |p| p.name.as_str()))
                }
                Part::Field(Field::Container) => out.push_str(c.display_name()),
                Part::Field(Field::Node) => out.push_str(&c.node),
            }
        }
        sanitize_index(&out)
    }
}

fn literal_or_date(text: &str) -> Result<Part, TemplateError> {
    if !text.contains('%') {
        return Ok(Part::Literal(text.to_string()));
    }
    let items = chrono::format::StrftimeItems::new(text)
        .parse_to_owned()
        .map_err(|_| TemplateError::BadDatePattern(text.to_string()))?;
    Ok(Part::Date(items))
}

/// Make a name acceptable to Elasticsearch: lowercase; `\ / * ? " < > | , # :` and
/// whitespace replaced by `_`; no leading `-`, `_` or `+`; at most 255 bytes; never
/// empty, `.` or `..` (those become `logroute`).
pub fn sanitize_index(name: &str) -> String {
    let mut out: String = name
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect();
    let start = out.len() - out.trim_start_matches(['-', '_', '+']).len();
    out.drain(..start);
    if out.len() > 255 {
        let mut end = 255;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    if out.is_empty() || out == "." || out == ".." {
        return "logroute".to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::StreamName;
    use crate::record::{ContainerInfo, PodInfo};

    fn pod_record(secs: i64) -> Record {
        Record {
            container: Arc::new(ContainerInfo {
                node: "node-a".into(),
                pod: Some(PodInfo {
                    name: "web-7d4b9c-x2x".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            stream: StreamName::Stdout,
            timestamp: Timestamp { secs, nanos: 0 },
            message: String::new(),
            truncated: false,
        }
    }

    #[test]
    fn templates_are_validated() {
        assert_eq!(
            IndexTemplate::parse("logs-{pods}").unwrap_err(),
            TemplateError::UnknownPlaceholder("pods".into())
        );
        assert_eq!(
            IndexTemplate::parse("logs-{pod").unwrap_err(),
            TemplateError::Unclosed
        );
        assert!(matches!(
            IndexTemplate::parse("logs-%Q"),
            Err(TemplateError::BadDatePattern(_))
        ));
        assert!(IndexTemplate::parse("logroute").unwrap().is_constant());
        assert!(!IndexTemplate::parse("logroute-%Y").unwrap().is_constant());
    }

    #[test]
    fn pod_and_node_placeholders_and_utc_dates() {
        let t = IndexTemplate::parse("{node}.{pod}.%Y-%j").unwrap();
        // 2023-12-31T23:30:00Z: still 2023 in UTC whatever the local zone.
        assert_eq!(
            t.render(&pod_record(1_704_065_400)),
            "node-a.web-7d4b9c-x2x.2023-365"
        );
    }

    #[test]
    fn index_names_are_made_valid() {
        assert_eq!(sanitize_index("Logs-Team A/B*?"), "logs-team_a_b__");
        assert_eq!(sanitize_index("_-+x"), "x");
        assert_eq!(sanitize_index("-"), "logroute");
        assert_eq!(sanitize_index(".."), "logroute");
        assert_eq!(sanitize_index(&"é".repeat(200)).len(), 254);
    }
}
